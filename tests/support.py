"""Helpers shared by the test tiers (no fixtures here; those live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for_condition(
    predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05, message: str = ""
) -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` passes (AssertionError).

    Ray's ``wait_for_condition`` in spirit: tests wait for a state, never for a time.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the state may not be reachable yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s: {message} (last error: {last_exc!r})")
