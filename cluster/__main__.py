"""`python -m cluster`: the `memring` command."""

import sys

from cluster.cli import main

sys.exit(main())
