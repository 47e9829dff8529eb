"""Tests of the Kubernetes API test server, driven by real clients."""
