"""A run scanned without its optimizer checkpoints: β2 and eps from the training's own configuration as its
writer logged it (HF Trainer's ``args`` text summary, Megatron-LM's per-argument text summaries, fairseq's
command line), or from ``--assume-beta2/--assume-eps``, instead of torch's defaults. β2 is v's memory: the
reconstruction of v̂ from the logged gradient norm runs on it, and LLM recipes use 0.95-0.98, not 0.999.

tests/fixtures/hf_args: a real HF Trainer run (adam_beta2 0.99, tools/fwprobe/make_hf_args_fixture.py), its log
only; truth.json holds the mean v̂ its checkpoints recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adamdiag.io import events as E
from adamdiag.io.checkpoints.hyper import Assumptions
from adamdiag.pipeline.scan import scan_paths

ROOT = Path(__file__).resolve().parents[2]
HF = ROOT / "tests" / "fixtures" / "hf_args"
FAIRSEQ_TB = ROOT / "tests" / "fixtures" / "fairseq_layout" / "vcollapse_clip" / "tb"


def _finding(rep, rule_id: str, start: str):
    (f,) = [f for f in rep.findings if f.id == rule_id and f.message.startswith(start)]
    return f


def test_hf_arguments_give_the_log_only_scan_its_beta2():
    truth = json.loads((HF / "truth.json").read_text())
    (rep,) = scan_paths([HF]).runs
    note = _finding(rep, "AD901", "no optimizer checkpoint found")
    assert note.evidence["beta2"] == truth["adam_beta2"] == 0.99
    assert note.evidence["source"].startswith("HF Trainer's arguments")
    # the checkpoints saw mean v̂ fall ~300x from step 250 to 1000, so no reconstruction may put the collapse's
    # depth (v̂ over its peak, the peak at least v̂ at 250) above that; with β2 0.99 it is below it
    fall = truth["mean_vhat"]["1000"] / truth["mean_vhat"]["250"]
    assert rep.verdict == "v_collapse"
    assert _finding(rep, "AD101", "v collapse").evidence["depth"] <= fall
    # the 0.999 a default assumed (given here as --assume-beta2, which also outranks the logged value)
    (assumed,) = scan_paths([HF], assume=Assumptions(beta2=0.999)).runs
    assert _finding(assumed, "AD901", "no optimizer checkpoint found").evidence["source"] == "--assume-beta2"
    assert _finding(assumed, "AD101", "v collapse").evidence["depth"] > fall  # v's memory too long: too shallow


def test_fairseq_command_line_gives_beta2():
    (ev,) = E.read_runs([FAIRSEQ_TB])
    hyper, source = E.writer_adam_hyperparameters(ev)
    assert hyper == {"beta2": 0.99, "eps": 1e-8} and source.startswith("fairseq's command line")
    (rep,) = scan_paths([FAIRSEQ_TB]).runs  # the log alone: no checkpoint beside it
    assert _finding(rep, "AD901", "no optimizer checkpoint found").evidence["beta2"] == 0.99


def _write(tmp_path: Path, texts: dict[str, str], *, args_json: dict | None = None) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    for k, v in texts.items():
        w.add_text(k, v, global_step=0)
    if args_json is not None:
        w.add_text("args", json.dumps(args_json))
    w.add_scalar("train/loss", 1.0, 1)
    w.close()
    return tmp_path


@pytest.mark.parametrize(
    ("texts", "args_json", "expected"),
    [
        ({"adam_beta2": "0.95", "adam_eps": "1e-08", "optimizer": "adam"}, None, {"beta2": 0.95, "eps": 1e-8}),
        ({"adam_beta2": "0.95", "optimizer": "sgd"}, None, {}),  # Megatron with another optimizer
        ({}, {"adam_beta2": 0.95, "adam_epsilon": 1e-6, "optim": "adamw_torch"}, {"beta2": 0.95, "eps": 1e-6}),
        ({}, {"adam_beta2": 0.95, "adam_epsilon": 1e-6, "optim": "adafactor"}, {}),  # HF with Adafactor
        ({"sys.argv": "fairseq-train d --optimizer nag --lr 0.1"}, None, {}),
    ],
)
def test_only_an_adam_configuration_is_taken(tmp_path, texts, args_json, expected):
    (ev,) = E.read_runs([_write(tmp_path, texts, args_json=args_json)])
    assert E.writer_adam_hyperparameters(ev)[0] == expected
