"""A sample claims service on `persistence`: FastAPI app, service layer, repositories, the AI-call ledger."""
