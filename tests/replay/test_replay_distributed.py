"""Variants split across 2 processes (gloo on CPU), gathered on rank 0: same results as one process."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_replay_fixture import tiny_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, ckpt: str, out: str, cwd: str) -> None:
    """One rank: torchrun's environment, then the command itself; stdout to a file per rank."""
    import torch

    # OpenMP's thread pool does not survive fork(): a forked child that runs multi-threaded kernels can hang
    torch.set_num_threads(1)
    os.environ.update(
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",
    )
    os.chdir(cwd)
    with open(f"{out}.{rank}", "w") as f:
        sys.stdout = f
        code = 3
        try:
            from adamdiag.replay.runner import run_replay

            code = run_replay(
                Path(ckpt),
                eps=["1e-3,1e-2,1e-1", "1e-4"],
                beta2=None,
                lr=None,
                steps=60,
                entry=None,
                logdir=None,
                device="cpu",
                fmt="json",
                plot=None,
                force=False,
                trust_checkpoint=False,
            )
        finally:
            f.flush()
            os._exit(code)


def _single(ckpt: Path) -> dict:
    import io
    from contextlib import redirect_stdout

    from adamdiag.replay.runner import run_replay

    buf = io.StringIO()
    with redirect_stdout(buf):
        code = run_replay(
            ckpt,
            eps=["1e-3,1e-2,1e-1", "1e-4"],
            beta2=None,
            lr=None,
            steps=60,
            entry=None,
            logdir=None,
            device="cpu",
            fmt="json",
            plot=None,
            force=False,
            trust_checkpoint=False,
        )
    assert code == 0
    return json.loads(buf.getvalue())


def _same_variants(a: dict, b: dict) -> None:
    assert [v["name"] for v in a["variants"]] == [v["name"] for v in b["variants"]]
    for x, y in zip(a["variants"], b["variants"]):
        assert len(x["losses"]) == len(y["losses"]) == 60
        # each rank batches a different subset: same numbers to rounding (the original is bit-equal)
        assert max(abs(p - q) / abs(q) for p, q in zip(x["losses"], y["losses"])) <= 1e-5
        assert x["spike"] == y["spike"]
    assert a["variants"][0]["losses"] == b["variants"][0]["losses"]
    assert a["fidelity"] == b["fidelity"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
@pytest.mark.skipif(
    _cuda(),
    reason="with CUDA, autograd's device threads do not survive fork(); "
    "test_torchrun_cli_two_processes and the gpu torchrun test cover this path",
)
def test_two_ranks_gloo_gather_equals_single_process(run, tmp_path):
    """Fast: two forked ranks (torch already imported) run the command's distributed path."""
    ckpt = run / "checkpoints" / "step_000090.pt"
    single = _single(ckpt)
    ctx = multiprocessing.get_context("fork")
    port = free_port()
    out = str(tmp_path / "rank")
    procs = [ctx.Process(target=_rank_main, args=(r, port, str(ckpt), out, os.getcwd())) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.exitcode is None:
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    assert Path(f"{out}.1").read_text() == ""  # only rank 0 prints
    dist = json.loads(Path(f"{out}.0").read_text())
    assert dist["mode"].endswith("across 2 ranks") and dist["device"] == "cpu x2"
    _same_variants(dist, single)


@pytest.mark.slow
def test_torchrun_cli_two_processes(run):
    """The real thing: `python -m torch.distributed.run --nproc-per-node 2 -m adamdiag.cli replay ...`."""
    ckpt = run / "checkpoints" / "step_000090.pt"
    single = _single(ckpt)
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
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
        "--eps",
        "1e-3,1e-2,1e-1",
        "--eps",
        "1e-4",
        "--steps",
        "60",
        "--format",
        "json",
        "--device",
        "cpu",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    dist = json.loads(res.stdout)  # exactly one JSON document: rank 1 printed nothing
    _same_variants(dist, single)
    # an input error on every rank: exit 2, one message
    bad = cmd[: cmd.index("--eps")] + ["--eps", "zero"]
    res = subprocess.run(bad, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert res.returncode != 0 and res.stderr.count("--eps: not a number") >= 1
