"""Schemathesis against a live `provisioner serve`: see tests/api/test_schemathesis.py."""
