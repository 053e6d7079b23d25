import sys

from alexnet.cli import main

sys.exit(main())
