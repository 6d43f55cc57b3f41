"""`python -m memring`: the `memring` command."""

import sys

from memring.cluster.cli import main

sys.exit(main())
