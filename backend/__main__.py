import sys

from memring.backend.cli import main

sys.exit(main())
