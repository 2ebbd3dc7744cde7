"""RQ worker that runs UP-ZeroIR jobs in-process with the model loaded once.

Kept import-light: the API imports `worker.reaper` and must not pull in torch through this package.
"""
