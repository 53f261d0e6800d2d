#!/usr/bin/env python3
"""Fill the configured database (or the embedded local one) with realistic demo data.

Same as `persistence seed`; run with --help for the options.
"""

import sys

from persistence.cli import seed_main

if __name__ == "__main__":
    sys.exit(seed_main())
