"""Test tools of their own, used by pairpod's tests and benchmarks (not shipped)."""
