"""Checkpoint layouts written by the libraries' own saving code: torch.distributed.checkpoint (one
process, and FSDP2-sharded by 2 gloo processes), PyTorch Lightning, Hugging Face Trainer, accelerate.
Each is read back and compared tensor for tensor with the live optimizer at save time."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import make_checkpoints as mk
import pytest
import torch

from adamdiag.errors import InputError, UntrustedCheckpointError
from adamdiag.io.checkpoints import find_checkpoints, open_checkpoint
from adamdiag.pipeline.summary import summarize_checkpoint

# 2 shared CPU cores: intra-op threads only oversubscribe them.


def _check_against_truth(path: Path, truth: dict, *, expect_all_named: bool = True, **kw) -> object:
    ck = open_checkpoint(path, **kw)
    seen = 0
    for t in ck.tensors():
        if t.name is None:
            assert not expect_all_named, f"unnamed {t.label} ({ck.name_mapping})"
            continue
        ref = truth[t.name]  # a wrong name fails here or on the values below
        assert tuple(t.shape) == tuple(ref["exp_avg"].shape), t.name
        assert torch.equal(t.exp_avg, ref["exp_avg"]), t.name
        assert torch.equal(t.exp_avg_sq, ref["exp_avg_sq"]), t.name
        assert t.step == ref["step"]
        if "param" in ref and t.param is not None:
            assert torch.equal(t.param, ref["param"]), t.name
        seen += 1
    if expect_all_named:
        assert seen == len(truth)
    return ck


# --- torch.distributed.checkpoint --------------------------------------------------------------------
@pytest.mark.parametrize("flatten", [False, True])
def test_dcp_single_process(tmp_path, flatten):
    path, truth = mk.write_dcp(tmp_path / "dcp_step3", flatten=flatten)
    ck = _check_against_truth(path, truth)
    assert (ck.layout, ck.name_mapping, ck.optimizer, ck.step) == ("dcp", "fqn", "AdamW", 3)
    groups = {e.name: e.group for e in ck.entries}
    assert groups["0.weight"] != groups["0.bias"]  # two groups recovered (per-parameter when flattened)
    assert {e.hyper["weight_decay"] for e in ck.entries if e.name.endswith("bias")} == {0.0}
    s = summarize_checkpoint(path)
    assert len(s.tensors) == 6 and all(t.param_rms is not None for t in s.tensors)
    assert find_checkpoints(tmp_path) == [path]


@pytest.mark.slow
def test_dcp_sharded_by_two_processes(tmp_path):
    path, truth = mk.write_dcp_sharded(tmp_path / "dcp_sharded")
    assert sorted(p.name for p in path.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    ck = _check_against_truth(path, truth)
    assert any("2 data files" in w for w in ck.warnings)


def test_dcp_metadata_needing_code_is_refused(tmp_path):
    path, _ = mk.write_dcp(tmp_path / "dcp")
    md = path / ".metadata"
    obj = pickle.loads(md.read_bytes())  # noqa: S301 - our own file
    obj.storage_meta.__dict__["evil"] = shutil.rmtree  # a global outside the allow-list
    md.write_bytes(pickle.dumps(obj))
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        open_checkpoint(path)


def test_dcp_non_adam(tmp_path):
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    msd, osd = get_state_dict(model, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp_path / "sgd"))
    with pytest.raises(InputError, match=r"found SGD \(momentum_buffer\)"):
        open_checkpoint(tmp_path / "sgd")


# --- PyTorch Lightning -------------------------------------------------------------------------------
def test_lightning_ckpt(tmp_path):
    pytest.importorskip("lightning")
    path, truth = mk.write_lightning(tmp_path)
    ck = _check_against_truth(path, truth)  # two groups, names from the module's state_dict
    assert (ck.layout, ck.step, ck.optimizer, ck.name_mapping) == ("lightning", 4, "AdamW", "model-order")
    assert find_checkpoints(tmp_path) == [path]


# --- Hugging Face Trainer --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out = tmp_path_factory.mktemp("hf")
    return mk.write_hf(out)


def test_hf_trainer_checkpoint(hf_checkpoint):
    path, truth = hf_checkpoint
    assert (path / "optimizer.pt").is_file() and (path / "model.safetensors").is_file()
    # GPT-2: lm_head is tied to wte (one parameter); Trainer's two groups reorder the parameters.
    assert "lm_head.weight" not in truth
    ck = _check_against_truth(path, truth)
    assert (ck.layout, ck.step, ck.optimizer, ck.name_mapping) == ("hf", 3, "AdamW", "model-order")
    assert find_checkpoints(path.parent) == [path]


def test_hf_without_config_names_only_what_is_certain(hf_checkpoint, tmp_path):
    """Without config.json the model order is unknown (safetensors stores names sorted): only
    shapes unique on both sides may be named — and those must be right."""
    path, truth = hf_checkpoint
    bare = tmp_path / "checkpoint-3"
    shutil.copytree(path, bare, ignore=shutil.ignore_patterns("config.json"))
    ck = _check_against_truth(bare, truth, expect_all_named=False)
    assert ck.name_mapping in ("shape-unique", "partial")
    named = [e.name for e in ck.entries if e.name]
    assert "transformer.wte.weight" in named  # (32, 16): unique shape
    assert "transformer.h.0.ln_1.weight" not in named  # (16,): many of those


# --- accelerate -------------------------------------------------------------------------------------
def test_accelerate_save_state(tmp_path):
    pytest.importorskip("accelerate")
    path, truth = mk.write_accelerate(tmp_path / "acc")
    assert (path / "optimizer.bin").is_file()
    ck = _check_against_truth(path, truth, expect_all_named=False)
    assert ck.layout == "accelerate" and ck.step == 3
    # Shapes (4→8, 8→8, LayerNorm 8, 8→2): the (8,) vectors are ambiguous in a sorted safetensors file.
    names = {e.name for e in ck.entries if e.name}
    assert {"0.weight", "2.weight", "4.weight", "4.bias"} <= names
