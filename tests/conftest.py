"""Shared test helpers.

Tests that need a real part (the yggdrasil daemon, namespaces, a mail client,
chromium) call :func:`require`: under CI (``CI=true``) a missing part is a failure,
elsewhere the test is skipped and the reason printed.
"""

from __future__ import annotations

import os

import pytest

from tests import leftovers

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Fail in CI, skip elsewhere, when a real part the test needs is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    print(f"SKIP (not in CI): {reason}")
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    # What tests leave running is reported and fails the run; the interpreter always
    # exits (tests/leftovers.py).
    leftovers.register(config)
