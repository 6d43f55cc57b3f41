import sys

from memring.proxy.cli import main

sys.exit(main())
