"""The AI-call ledger: logging, reconciliation against the metering vendor, access and monitoring."""
