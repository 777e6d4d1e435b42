"""Fakes of external services (LLM upstreams) for tests and benchmarks."""
