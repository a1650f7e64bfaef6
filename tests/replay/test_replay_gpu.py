"""`adamdiag replay` on CUDA end to end (skipped without CUDA): the same conclusions as on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_replay import REPO, SAMPLE, _no_nan_literals, invoke
from test_replay_fixture import BLOWUP_STEP, tiny_run

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


def _replay(ckpt: Path, *args: str, cwd: Path | None = None) -> dict:
    res = invoke(ckpt, *args, "--format", "json", cwd=cwd)
    assert res.exit_code == 0, res.output
    return _no_nan_literals(res.stdout)


def test_cuda_replay_reaches_the_cpu_conclusions(run):
    """The tiny run from the checkpoint before the collapse: on CUDA the original still reproduces the
    logged blowup (the run was trained on CPU, so agreement is to float32 rounding, within the fidelity
    threshold), the alternates run batched on the GPU and none of them spikes, as on CPU."""
    ckpt = run / "checkpoints" / "step_000090.pt"
    cpu = _replay(ckpt, "--device", "cpu")
    gpu = _replay(ckpt, "--device", "cuda")
    assert gpu["device"].startswith("cuda") and gpu["mode"] == "batched"
    assert gpu["fidelity"]["reproduced"] is True, gpu["fidelity"]["message"]
    assert abs(gpu["fidelity"]["replayed_spike_step"] - BLOWUP_STEP) <= 2
    assert [(v["name"], v["outcome"]) for v in gpu["variants"]] == [(v["name"], v["outcome"]) for v in cpu["variants"]]
    assert gpu["conclusion"] == cpu["conclusion"] == "fixed"
    for g, c in zip(gpu["variants"][1:], cpu["variants"][1:]):
        # no blowup in the alternates: their curves agree to float32 noise over the whole window
        assert max(abs(x - y) / abs(y) for x, y in zip(g["losses"], c["losses"])) <= 1e-3


def test_auto_device_is_cuda(run):
    d = _replay(run / "checkpoints" / "step_000090.pt", "--eps", "1e-2", "--steps", "20", "--device", "auto")
    assert d["device"].startswith("cuda")


@pytest.mark.skipif(not (SAMPLE / "checkpoints" / "step_000600.pt").exists(), reason="sample_logs not generated")
def test_sample_logs_vcollapse_on_cuda():
    """README's replay example with --device cuda: the CPU-trained sample reproduces and eps 1e-3 fixes it."""
    d = _replay(Path("sample_logs/vcollapse/checkpoints/step_000600.pt"), "--device", "cuda", cwd=REPO)
    truth = json.loads((SAMPLE / "truth.json").read_text())["summary"]["blowup_step"]
    fid = d["fidelity"]
    assert fid["reproduced"], fid["message"]
    assert abs(fid["replayed_spike_step"] - truth) <= 5
    orig, *alts = d["variants"]
    assert orig["spike"] and [v["name"] for v in alts] == ["eps=0.001", "eps=0.01", "eps=0.1"]
    assert not any(v["spike"] for v in alts) and all(v["outcome"] == "avoided" for v in alts)
    assert d["conclusion"] == "fixed"


def test_torchrun_two_ranks_on_cuda(run):
    """Two ranks under torchrun with --device cuda: on one GPU they share it and talk over gloo
    (NCCL refuses two ranks on one device); with a GPU each, over nccl. Same table as one process."""
    import os
    import subprocess
    import sys

    import torch
    from test_replay_distributed import free_port

    ckpt = run / "checkpoints" / "step_000090.pt"
    common = ["--eps", "1e-3,1e-2,1e-1", "--eps", "1e-4", "--steps", "60", "--device", "cuda"]
    single = _replay(ckpt, *common)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "adamdiag.cli",
        "replay",
        str(ckpt),
        *common,
        "--format",
        "json",
    ]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    dist = json.loads(res.stdout)
    assert dist["mode"].endswith("across 2 ranks"), dist["mode"]
    print("backend:", "nccl" if torch.cuda.device_count() >= 2 else "gloo", "device:", dist["device"])
    assert [v["name"] for v in dist["variants"]] == [v["name"] for v in single["variants"]]
    assert dist["variants"][0]["losses"] == single["variants"][0]["losses"]  # the reference path, same GPU
    for x, y in zip(dist["variants"], single["variants"]):
        assert x["spike"] == y["spike"] and x["outcome"] == y["outcome"]
        assert max(abs(p - q) / abs(q) for p, q in zip(x["losses"], y["losses"])) <= 1e-4
