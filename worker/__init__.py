"""RQ worker that runs UP-ZeroIR jobs in-process with the model loaded once (compute only; the job system
it shares with the API lives in `jobs/`)."""
