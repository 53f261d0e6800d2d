#!/usr/bin/env python3
"""Migrate the configured database safely: run (default) | status | rollback.

Same as `persistence migrate`; run with --help for the options and exit codes.
"""

import sys

from persistence.migrate_cli import main

if __name__ == "__main__":
    sys.exit(main())
