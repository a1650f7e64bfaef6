"""A guard for tests of inputs that could block (a FIFO's open) or crawl: no tests in here."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def in_time(fn: Callable[[], T], seconds: float = 60.0) -> T:
    """``fn()`` in a thread; fails the test instead of hanging the suite when it does not return in
    ``seconds`` (blocked on a FIFO's open, or far too slow). What ``fn`` raises is raised here."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            out["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    if th.is_alive():
        pytest.fail(f"did not return in {seconds:g} s (blocked on a FIFO, or far too slow)")
    if "error" in out:
        raise out["error"]
    return out["value"]
