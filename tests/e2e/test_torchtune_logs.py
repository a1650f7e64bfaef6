"""torchtune's output_dir as its recipes leave it (tests/fixtures/torchtune, written by torchtune 0.6.1's own
DiskLogger, config saver and FullModelTorchTuneCheckpointer: tools/runlab/make_torchtune_fixtures.py): the
DiskLogger files read as what the recipe handed to ``log_dict``, a resumed run's two files as one run, β2/eps and the
clipping norm from ``torchtune_config.yaml``, the optimizer state from ``recipe_state/recipe_state.pt``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from adamdiag.io import events as E
from adamdiag.io.torchtune_log import config_arguments, is_disk_log, parse_config, read_disk_log
from adamdiag.pipeline.scan import scan_paths

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "torchtune"
OUTPUT_DIR = FIXTURES / "output_dir"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def test_each_file_holds_what_log_dict_was_handed() -> None:
    assert len(EXPECTED["logged"]) == 2
    for name, steps in EXPECTED["logged"].items():
        data = read_disk_log(OUTPUT_DIR / "logs" / name)
        assert data.warnings == [] and data.kinds == {"torchtune"}
        got: dict[str, dict[str, float]] = {}
        for code, step, value in zip(data.s_tag[0], data.s_step[0], data.s_value[0]):
            got.setdefault(str(step), {})[data.tags[code]] = float(value)
        assert got == steps  # DiskLogger writes str(float): read back exactly


def test_a_resumed_run_is_one_run_with_its_checkpoint() -> None:
    """The logs folder is the run (both files, steps 1-120 in order); recipe_state.pt beside it is read: the bad
    batch at step 100 is a spike the run recovered from (healthy), β2 0.95 from the checkpoint."""
    found = E.discover([FIXTURES])
    assert found.runs == [OUTPUT_DIR / "logs"]
    found = E.discover([OUTPUT_DIR])
    assert found.runs == [OUTPUT_DIR / "logs"]
    ev = E.read_run(OUTPUT_DIR / "logs")
    loss = ev.scalars[ev.scalars["tag"] == "loss"]
    assert loss["step"].tolist() == list(range(1, 121)) and loss["source_file"].nunique() == 2
    (rep,) = scan_paths([OUTPUT_DIR]).runs
    assert rep.verdict == "healthy" and "checkpoints" in rep.sources
    assert any(f.id == "AD002" and f.step == 100 for f in rep.findings)
    assert any(f.id == "AD601" and "torchtune's recipe config" in f.message for f in rep.findings)


def test_without_checkpoints_the_config_gives_beta2_eps_and_clipping(tmp_path: Path) -> None:
    shutil.copytree(OUTPUT_DIR / "logs", tmp_path / "out" / "logs")
    shutil.copy(OUTPUT_DIR / "torchtune_config.yaml", tmp_path / "out")
    (rep,) = scan_paths([tmp_path / "out"]).runs
    msgs = [f.message for f in rep.findings]
    assert any("beta2=0.95, eps=1e-08 from torchtune's recipe config" in m for m in msgs), msgs
    assert any(m.startswith("gradient clipping at 1 (clip_grad_norm in") for m in msgs), msgs
    (tmp_path / "out" / "torchtune_config.yaml").unlink()  # no config: torch's defaults, no clipping assumed
    (rep,) = scan_paths([tmp_path / "out"]).runs
    assert not any(f.id == "AD601" for f in rep.findings)
    assert any("assumed beta2=0.999, eps=1e-08" in f.message for f in rep.findings)


@pytest.mark.parametrize(
    ("text", "hyper", "clip"),
    [
        ("optimizer:\n  _component_: torch.optim.SGD\n  lr: 0.1\nclip_grad_norm: 1.0\n", {}, 1.0),
        ("optimizer:\n  _component_: bitsandbytes.optim.PagedAdamW8bit\n  lr: 2e-5\nclip_grad_norm: null\n", {"beta2": 0.999, "eps": 1e-8}, None),
        ("optimizer:\n  _component_: torchao.optim.AdamW8bit\n  eps: 1.0e-06\nclip_grad_norm: inf\n", {"beta2": 0.999, "eps": 1e-6}, None),
    ],
)  # fmt: skip
def test_recipe_configs(tmp_path: Path, text: str, hyper: dict, clip: float | None) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "torchtune_config.yaml").write_text(text)
    args, where = config_arguments(tmp_path / "logs")
    assert where == str(tmp_path / "torchtune_config.yaml")
    args[E.ARGS_SOURCE] = where
    assert E.writer_adam_hyperparameters(E.RunEvents("r", None, None, [], {}, [], []), [args])[0] == hyper
    assert E.writer_clip_norm(E.RunEvents("r", None, None, [], {}, [], []), [args])[0] == clip


def test_config_parser_leaves_out_what_it_cannot_read() -> None:
    got = parse_config("a: 1\nb:\n  c:\n    d: 2\n  e: [1, 2]\n  f: x # note\nlist:\n- 1\n- 2\n")
    assert got == {"a": 1, "b.e": "[1, 2]", "b.f": "x", "list": [1, 2]}


def test_damage_and_other_files(tmp_path: Path) -> None:
    logs = tmp_path / "run" / "logs"
    shutil.copytree(OUTPUT_DIR / "logs", logs)
    first = sorted(logs.iterdir())[0]
    text = first.read_text()
    first.write_text(text + "Step 61 | loss:0.4 lr:0.0")  # the run still writing it: lr's digits not there yet
    data = read_disk_log(first)
    assert max(data.s_step[0]) == 60  # the cut line is not read (its lr would be 0.0)
    assert data.warnings == [f"{first}: truncated record at byte {len(text.encode())} (the run is still writing it?)"]
    first.write_text(text)
    last = sorted(logs.iterdir())[-1]
    last.write_text(last.read_text() + "Step 121 | loss:0.4 lr:0.0")
    (rep,) = scan_paths([logs]).runs  # the run's newest file: in progress (info), not damage
    assert [f.severity for f in rep.findings if f.id == "AD902"] == ["info"]
    first.write_text("garbage\n" + text)
    assert read_disk_log(first).warnings == [f"{first}: 1 line(s) that are no 'Step N | ...' line skipped"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "log_123.txt").write_text("epoch 1 loss 0.5\n")  # some other program's log
    os.mkfifo(other / "log_456.txt")  # never opened: a FIFO would block
    assert not is_disk_log(other / "log_123.txt") and not is_disk_log(other / "log_456.txt")
    assert E.discover([tmp_path]).runs == [logs]


def test_optimizer_in_backward_state_is_named_by_its_keys() -> None:
    """optimizer_in_bwd: one AdamW per parameter, keyed by its name — each tensor named by its key, one note."""
    from adamdiag.io.checkpoints import open_checkpoint

    ck = open_checkpoint(FIXTURES / "optimizer_in_bwd" / "recipe_state" / "recipe_state.pt")
    assert ck.name_mapping == "optimizer-keys" and ck.step == 5 and len(ck.entries) == 12
    assert {e.name for e in ck.entries} >= {"output.weight", "tok_embeddings.weight", "norm.scale"}
    assert [w for w in ck.warnings if "optimizers of one parameter each under 'optimizer'" in w]
