"""One module per checkpoint format: its config file and its explicit weight-name map."""
