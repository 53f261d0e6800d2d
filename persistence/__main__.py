import sys

from persistence.cli import main

sys.exit(main())
