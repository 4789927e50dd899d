"""The browser tests' fixtures, defined in dashboard.py beside the helpers
the tests import from it (a test importing `conftest` would get whichever
conftest module pytest loaded last)."""

from dashboard import api, browser, dash, server  # noqa: F401  (fixtures: pytest finds them here)
