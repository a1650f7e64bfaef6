"""Hugging Face ``transformers.Trainer`` hook: ``AdamDiagCallback`` (a ``TrainerCallback``).

Imports transformers; ``import adamdiag.monitor`` alone does not.

>>> from adamdiag.monitor.hf import AdamDiagCallback  # doctest: +SKIP
>>> Trainer(model=model, args=args, train_dataset=ds, callbacks=[AdamDiagCallback(every=10)]).train()  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback

from adamdiag.monitor.callback import MonitorCallbackSettings


def _unwrap(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (what Trainer hands to callbacks;
    itself a torch Optimizer subclass, so unwrap by the ``optimizer`` attribute, not by type)."""
    seen = 0
    while hasattr(optimizer, "optimizer") and optimizer.optimizer is not optimizer and seen < 8:
        optimizer = optimizer.optimizer
        seen += 1
    return optimizer


class AdamDiagCallback(MonitorCallbackSettings, TrainerCallback):
    """Attaches an :class:`~adamdiag.monitor.core.AdamMonitor` to the Trainer's optimizer.

    ``writer="auto"``: a torch SummaryWriter of its own, on the main process only, in
    ``args.logging_dir`` (transformers < 5) or ``$TENSORBOARD_LOGGING_DIR`` (where transformers 5
    writes its TensorBoard logs when set: then ``adamdiag scan`` sees both in one run) or else
    ``args.output_dir``; ``None`` for no tags. ``run_dir`` (the live file) defaults to the same
    directory. The logged training loss is fed to the monitor (``on_log``). The settings are
    :class:`~adamdiag.monitor.callback.MonitorCallbackSettings`' (shared with the Lightning callback).
    """

    _own_writer: Any = None  # the SummaryWriter this callback opened itself (writer="auto"), closed at train end

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kw: Any):
        if optimizer is None:
            return
        # transformers < 5 has args.logging_dir; 5.x writes TensorBoard logs to TENSORBOARD_LOGGING_DIR
        # (else a dated folder under output_dir/runs that a callback cannot see).
        log_dir = getattr(args, "logging_dir", None) or os.environ.get("TENSORBOARD_LOGGING_DIR") or args.output_dir
        writer = self.writer
        if writer == "auto":
            writer = None
            if state.is_world_process_zero:
                from torch.utils.tensorboard import SummaryWriter

                writer = self._own_writer = SummaryWriter(log_dir=log_dir)
        self.attach_monitor(_unwrap(optimizer), model, writer, self.run_dir or log_dir)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any):
        if self.monitor is not None and logs and "loss" in logs:
            self.monitor.log_loss(state.global_step, logs["loss"])

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any):
        self.close_monitor()
        if self._own_writer is not None:
            self._own_writer.close()
            self._own_writer = None
