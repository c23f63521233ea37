"""Fixtures for pipeline tests (helpers live in pipeline_testlib.py; Ray: tests/conftest.py)."""
