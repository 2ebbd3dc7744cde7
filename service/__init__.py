"""HTTP front of the restoration service: FastAPI app, auth, upload policy, SSE, metrics, client (HTTP only;
the job system it shares with the workers lives in `jobs/`)."""
