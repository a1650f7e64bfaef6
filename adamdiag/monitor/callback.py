"""What the framework callbacks (:mod:`adamdiag.monitor.lightning`, :mod:`adamdiag.monitor.hf`) share.

Both take the same settings and attach one :class:`~adamdiag.monitor.core.AdamMonitor` with them at
the start of training; only how they find the optimizer(s), the writer and the run directory differs
by framework. Imports no framework (each callback module imports its own).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from adamdiag.monitor.core import AdamMonitor


class MonitorCallbackSettings:
    """The settings of a framework callback and the :class:`AdamMonitor` it attaches with them.

    A mixin placed before the framework's callback class: ``every``, ``on_finding`` and ``raise_on``
    go to the monitor unchanged, ``writer`` (``"auto"``: the framework's own, resolved by the
    subclass; ``None``: no tags) and ``run_dir`` (None: the framework's log directory) are resolved
    by the subclass at train start, ``**monitor_kw`` are further :class:`AdamMonitor` arguments.
    ``monitor`` is the live monitor once training started (findings, verdict, last signals).
    """

    def __init__(
        self,
        every: int = 10,
        writer: Any = "auto",
        run_dir: str | None = None,
        on_finding: Callable[[Any], Any] | None = None,
        raise_on: str | None = None,
        **monitor_kw: Any,
    ) -> None:
        super().__init__()  # the framework's callback class, next in the MRO
        self.every = every
        self.writer = writer
        self.run_dir = run_dir
        self.on_finding = on_finding
        self.raise_on = raise_on
        self.monitor_kw = monitor_kw
        self.monitor: AdamMonitor | None = None

    def attach_monitor(self, optimizer: Any, model: Any, writer: Any, run_dir: str | os.PathLike[str]) -> AdamMonitor:
        """Build the monitor on ``optimizer`` (one or a list) with this callback's settings and the
        framework's resolved ``writer`` and ``run_dir``; kept as ``self.monitor``."""
        self.monitor = AdamMonitor(
            optimizer,
            model=model,
            writer=writer,
            every=self.every,
            on_finding=self.on_finding,
            raise_on=self.raise_on,
            run_dir=run_dir,
            **self.monitor_kw,
        )
        return self.monitor

    def close_monitor(self) -> None:
        """At train end: close the monitor if one was attached (it stays readable as ``self.monitor``)."""
        if self.monitor is not None:
            self.monitor.close()
