"""Quality and speed harnesses for the restorer (see README.md here and shared/design/BENCHMARK.md)."""
