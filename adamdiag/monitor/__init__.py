"""Live monitor: scan's v-collapse rules on the running optimizer (issue 15).

Importing this package imports neither torch nor Lightning nor transformers; the framework hooks
live in :mod:`adamdiag.monitor.lightning` and :mod:`adamdiag.monitor.hf`.

>>> import adamdiag.monitor as m
>>> m.LIVE_SCHEMA
'adamdiag.live/1'
"""

from __future__ import annotations

from typing import Any

LIVE_SCHEMA = "adamdiag.live/1"
LIVE_FILE = "adamdiag-live.json"

__all__ = ["LIVE_FILE", "LIVE_SCHEMA", "AdamDiagAlarm", "AdamMonitor"]


def __getattr__(name: str) -> Any:
    # Lazy: `adamdiag.monitor` is importable by the CLI without paying for torch.
    if name in ("AdamMonitor", "AdamDiagAlarm", "SIGNALS"):
        from adamdiag.monitor import core

        return getattr(core, name)
    raise AttributeError(name)
