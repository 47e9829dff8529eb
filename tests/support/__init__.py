"""Helpers shared by the test suite: locally built images and test fixtures."""
