#!/usr/bin/env python3
"""Weekly reconciliation (seed 000's cron): ledger vs metering vendor; prints a table, exit 1 on FAIL.

Same as `persistence reconcile`; run with --help for the options.
"""

import sys

from persistence.cli import reconcile_main

if __name__ == "__main__":
    sys.exit(reconcile_main())
