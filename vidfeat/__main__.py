import sys

from vidfeat.cli import main

sys.exit(main())
