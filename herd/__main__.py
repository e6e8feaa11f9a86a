"""`python -m herd`, e.g. `torchrun --nproc-per-node 2 -m herd train ...`."""

import sys

from herd.cli.main import main

sys.exit(main())
