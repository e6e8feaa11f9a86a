"""The `herd` command: one module per subcommand, each with `register(subparsers)` and `run(args)`."""
