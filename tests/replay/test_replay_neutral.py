"""The framework-neutral replay entry (issue 14, item 6) on a real run, on every test run.

The run and its entry are TF1-convention Adam in pure numpy (numpy_tf1_entry.py): it blows up at step
341 from v collapse (32 of 40 features quiet from step 100 to 340, and again after 420). From the
checkpoint at 90, eps 1e-3 avoids the blowup while lr/3 leaves the quiet tensor collapsing again at the
horizon's end (at_risk): the same outcome rules as the torch engines, fed by the entry's g² and v̂_{t-1}.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamdiag.cli import app

HERE = Path(__file__).resolve().parent
ENTRY = f"{HERE / 'numpy_tf1_entry.py'}:adamdiag_replay"
TF1_FIXTURE = HERE.parent / "fixtures" / "tf" / "tf1" / "model.ckpt-30"
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("numpy_tf1_entry_train", HERE / "numpy_tf1_entry.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.train(tmp_path_factory.mktemp("neutral") / "np_tf1")


def replay(*args: object, code: int | None = None) -> tuple[int, dict, str]:
    res = runner.invoke(app, ["replay", *map(str, args), "--format", "json"])
    if code is not None:
        assert res.exit_code == code, res.output
    out = json.loads(res.stdout) if res.exit_code in (0, 1) else {}
    return res.exit_code, out, res.output


def test_fidelity_and_the_eps_fix_vs_lr(run: Path) -> None:
    code, d, _ = replay(run / "checkpoints" / "step_000090.pt", "--entry", ENTRY, "--eps", "1e-3", "--lr", "3.3e-3")
    assert code == 0 and d["conclusion"] == "fixed" and d["mode"] == "entry" and d["device"] == "entry"
    fid = d["fidelity"]
    assert fid["reproduced"] and fid["max_rel_dev"] < 1e-6  # float64 numpy vs the float32 event file
    by = {v["name"]: v for v in d["variants"]}
    assert by["original"]["outcome"] == "blowup" and by["original"]["blowup_step"] == 341
    assert by["eps=0.001"]["outcome"] == "avoided"
    lr = by["lr=0.0033"]
    assert lr["outcome"] == "at_risk" and lr["risk"]["scope"] == "w_quiet" and lr["risk"]["r"] < 0.1


def test_exit_codes(run: Path) -> None:
    ck = run / "checkpoints"
    code, d, _ = replay(ck / "step_000090.pt", "--entry", ENTRY, "--lr", "3.3e-3")
    assert code == 1 and d["conclusion"] == "postponed"  # the best is at_risk
    code, d, _ = replay(ck / "step_000150.pt", "--entry", ENTRY, "--lr", "3.3e-3")
    assert code == 1 and d["conclusion"] == "not_fixed" and d["variants"][1]["blowup_step"] == 341


def test_a_checkpoint_no_reader_knows_takes_the_entrys_original(run: Path) -> None:
    _, pt, _ = replay(run / "checkpoints" / "step_000090.pt", "--entry", ENTRY, "--eps", "1e-3", code=0)
    _, npz, _ = replay(run / "checkpoints" / "step_000090.npz", "--entry", ENTRY, "--eps", "1e-3", code=0)
    assert npz["start_step"] == 90 and [v["losses"] for v in npz["variants"]] == [v["losses"] for v in pt["variants"]]


def test_bad_entries_are_one_line_exit_2(run: Path, tmp_path: Path) -> None:
    ck = run / "checkpoints" / "step_000090.pt"
    cases = {
        "short": (
            "return {'run': lambda c, v, n: {'loss': [1.0] * n, 'g2': {'global': [1.0]}, 'vhat': {'global': [1.0] * n}}}",
            "g2['global'] has 1 values",
        ),
        "nog2": ("return {'run': lambda c, v, n: {'loss': [1.0] * n}}", "returned no g2, vhat"),
        "boom": ("return {'run': lambda c, v, n: 1 / 0}", "raised ZeroDivisionError"),
        "far": (
            "m = __import__('numpy_tf1_entry')\n    return {'run': lambda c, v, n: {**m.run(c, v, n), 'loss': [x * 1.1 for x in m.run(c, v, n)['loss']]}}",
            "no conclusion drawn",
        ),
    }
    for name, (body, msg) in cases.items():
        f = tmp_path / f"{name}.py"
        f.write_text(f"import sys\nsys.path.insert(0, {str(HERE)!r})\ndef adamdiag_replay(c):\n    {body}\n")
        code, _, out = replay(ck, "--entry", f"{f}:adamdiag_replay", "--eps", "1e-3")
        assert code == 2 and msg in out and "Traceback" not in out, (name, out)
    npz = run / "checkpoints" / "step_000090.npz"
    code, _, out = replay(npz, "--entry", f"{HERE / 'numpy_tf1_entry.py'}:run_only")
    assert code == 2 and "no reader knows this checkpoint" in out and "'original'" in out


def test_a_tf_checkpoint_without_a_neutral_entry_says_what_to_provide(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no config naming an entry here or above
    res = runner.invoke(app, ["replay", str(TF1_FIXTURE)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    (line,) = [x for x in res.output.splitlines() if "error" in x]
    assert "tf1 checkpoint" in line and "framework-neutral entry" in line and "run(checkpoint, variant, steps)" in line
    torch_entry = HERE.parents[1] / "examples" / "replay_entry.py"
    res = runner.invoke(app, ["replay", str(TF1_FIXTURE), "--entry", f"{torch_entry}:adamdiag_replay"])
    assert res.exit_code == 2 and "is a PyTorch entry" in res.output and "{'run': run}" in res.output


def scan_json(*args: object) -> dict:
    res = runner.invoke(app, ["scan", *map(str, args), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    return r


def test_scan_verify_with_the_neutral_entry(run: Path) -> None:
    r = scan_json(run, "--verify", "--entry", ENTRY)
    ver = r["verification"]
    assert r["verdict"] == "v_collapse" and ver["confirms"] is True and r["verdict_source"] == "replay"
    assert ver["start_step"] == 150 and ver["best"] == "eps=0.001" and ver["fidelity"]["reproduced"]
    by = {v["name"]: v["outcome"] for v in ver["variants"]}
    assert by["original"] == "blowup" and {by[n] for n in by if n.startswith("lr=")} <= {"at_risk", "blowup"}


def test_a_neutral_entry_found_in_the_scanned_tree_needs_trust(run: Path, tmp_path: Path, monkeypatch) -> None:
    tree = tmp_path / "third_party"
    shutil.copytree(run, tree / "np_tf1")
    marker = tmp_path / "ran"
    (tree / "e.py").write_text(f"open({str(marker)!r}, 'w')\ndef adamdiag_replay(c):\n    return {{'run': None}}\n")
    (tree / "adamdiag.toml").write_text('[replay]\nentry = "e.py:adamdiag_replay"\n')
    monkeypatch.chdir(tmp_path)
    r = scan_json(tree / "np_tf1", "--verify")
    assert not marker.exists() and "--trust-entry" in r["verification"]["reason"]


def test_scan_verify_of_a_tf_run_without_an_entry_says_which_entry(tmp_path: Path, monkeypatch) -> None:
    sample = HERE.parents[1] / "sample_logs" / "tf1_vcollapse"
    if not sample.is_dir():
        pytest.skip("sample_logs/tf1_vcollapse not shipped")
    shutil.copytree(sample, tmp_path / "tf1", ignore=shutil.ignore_patterns("adamdiag.toml"))
    monkeypatch.chdir(tmp_path)
    r = scan_json(tmp_path / "tf1", "--verify")
    assert r["verdict"] == "v_collapse" and r["verification"]["confirms"] is None
    assert "tf1 checkpoint" in r["verification"]["reason"] and "framework-neutral entry" in r["verification"]["reason"]
