"""HTTP front of the restoration service: FastAPI app, upload policy, job store, SSE, metrics, client."""
