"""Bad use gives one warning and never breaks training."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from monitor_loops import mlp, train

from adamdiag.monitor import AdamMonitor


def _runtime_warnings(rec: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning) and "adamdiag" in str(w.message)]


def test_non_adam_optimizer_one_warning_training_unchanged() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mon = AdamMonitor(opt, model=model, every=1)
        losses = train(model, opt, 20)
    msgs = _runtime_warnings(rec)
    assert len(msgs) == 1 and "SGD" in msgs[0]
    assert mon.step is None and not mon.last and losses[-1] < losses[0]
    # the same losses as without the monitor: it did nothing
    model2 = mlp()
    assert train(model2, torch.optim.SGD(model2.parameters(), lr=1e-2), 20) == losses


def test_no_names_one_warning_generic_names() -> None:
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mon = AdamMonitor(opt, every=1)  # neither model= nor names=
        train(model, opt, 5)
    msgs = _runtime_warnings(rec)
    assert len(msgs) == 1 and "no parameter names" in msgs[0]
    assert {"group0.param0", "group0.param3"} <= set(mon.last)


def test_model_missing_some_parameters_one_warning() -> None:
    model = mlp()
    extra = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([*model.parameters(), extra])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mon = AdamMonitor(opt, model=model, every=1)
        for _ in range(3):
            opt.zero_grad()
            (model(torch.ones(2, 8)).sum() + extra.sum()).backward()
            opt.step()
    msgs = _runtime_warnings(rec)
    assert len(msgs) == 1 and "not in the model" in msgs[0]
    assert "group0.param4" in mon.last and "0.weight" in mon.last


def test_closed_writer_one_warning_monitor_keeps_working(tmp_path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    w = SummaryWriter(str(tmp_path))
    w.close()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mon = AdamMonitor(opt, model=model, writer=w, every=1)
        train(model, opt, 5)
        mon.log_loss(6, float("nan"))
    msgs = _runtime_warnings(rec)
    assert len(msgs) == 1 and "closed" in msgs[0]
    assert mon.enabled and mon.step == 5 and [f.id for f in mon.findings] == ["AD401"]
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1  # no new event file was opened


def test_internal_error_disables_once_training_continues() -> None:
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    mon = AdamMonitor(opt, model=model, every=1)

    def broken(items):  # an internal failure (say, an unexpected state layout)
        raise KeyError("exp_avg_sq")

    mon._engine.rows = broken
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        losses = train(model, opt, 10)
    msgs = _runtime_warnings(rec)
    assert len(msgs) == 1 and "disabled" in msgs[0]
    assert not mon.enabled and len(losses) == 10 and losses[-1] < losses[0]


def test_failing_on_finding_one_warning() -> None:
    model = mlp()
    opt = torch.optim.Adam(model.parameters())

    def cb(f):
        raise ValueError("user bug")

    mon = AdamMonitor(opt, model=model, every=1, on_finding=cb)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mon.log_loss(1, float("nan"))
        mon.log_loss(2, float("inf"))
        train(model, opt, 3)
    msgs = _runtime_warnings(rec)
    assert len(msgs) == 1 and "on_finding" in msgs[0]
    assert mon.enabled


def test_bad_raise_on_is_a_usage_error() -> None:
    opt = torch.optim.Adam(mlp().parameters())
    with pytest.raises(ValueError, match="raise_on"):
        AdamMonitor(opt, raise_on="fatal")


def test_import_is_lazy() -> None:
    """`import adamdiag.monitor` pulls in neither torch nor Lightning nor transformers (the hooks live in
    adamdiag.monitor.lightning and adamdiag.monitor.hf)."""
    code = (
        "import sys, adamdiag.monitor;"
        "print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
