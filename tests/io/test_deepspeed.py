"""DeepSpeed ZeRO-1/2/3, bf16, universal and HF Trainer + DeepSpeed checkpoints, read without deepspeed.

The fixtures in tests/fixtures/deepspeed/ were written by real 2-rank DeepSpeed 0.19.8 runs on its CPU
accelerator (tools/runlab/make_deepspeed_fixtures.py); truth.json holds what DeepSpeed itself reports
for every parameter (``safe_get_full_optimizer_state``, ``safe_get_full_fp32_param``). Every test here
except the ones marked with ``importorskip`` runs with deepspeed made unimportable.
"""

from __future__ import annotations

import fractions
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from adamdiag.errors import InputError, UntrustedCheckpointError
from adamdiag.io.checkpoints import find_checkpoints, open_checkpoint
from adamdiag.pipeline.summary import summarize_checkpoint

FIX = Path(__file__).parent.parent / "fixtures" / "deepspeed"
TRUTH = json.loads((FIX / "truth.json").read_text())
LAYOUT = {
    "z1_fp32": "deepspeed-zero1",
    "z1_bf16": "deepspeed-zero1",
    "z2_fp32": "deepspeed-zero2",
    "z2_bf16": "deepspeed-zero2",
    "z3_fp32": "deepspeed-zero3",
    "z3_bf16": "deepspeed-zero3",
    "z3_fp32_subgroups": "deepspeed-zero3",  # 3 flat partitions per rank for 2 param groups
    "z2_fp32_universal": "deepspeed-universal",
    "z3_fp32_universal": "deepspeed-universal",
    "hf_z2_fp32": "deepspeed-zero2",
}


def needs_deepspeed(fn):
    """The test uses deepspeed itself (to write a file in another form); skipped where it is absent."""
    fn.needs_deepspeed = True
    return fn


@pytest.fixture(autouse=True)
def _no_deepspeed(request, monkeypatch):
    """deepspeed unimportable (None in sys.modules makes ``import deepspeed`` raise ImportError)."""
    if not getattr(request.function, "needs_deepspeed", False):
        for name in [m for m in sys.modules if m == "deepspeed" or m.startswith("deepspeed.")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, "deepspeed", None)


def _root(cfg: str) -> Path:
    return FIX / cfg / "checkpoint-3" if cfg.startswith("hf_") else FIX / cfg


def _as(ref: dict, key: str) -> torch.Tensor:
    return torch.tensor(ref[key], dtype=torch.float32).view(ref["shape"])


def test_truth_covers_every_configuration():
    assert set(TRUTH) == set(LAYOUT)
    assert all(t["world_size"] == 2 and t["deepspeed"] == "0.19.8" for t in TRUTH.values())


@pytest.mark.parametrize("cfg", sorted(LAYOUT))
def test_moments_by_name_equal_deepspeeds_own(cfg):
    truth = TRUTH[cfg]
    ck = open_checkpoint(_root(cfg))
    assert (ck.layout, ck.step, ck.optimizer, ck.name_mapping) == (LAYOUT[cfg], 3, "AdamW", "param_names")
    seen = set()
    for t in ck.tensors():
        ref = truth["tensors"][t.name]
        assert list(t.shape) == ref["shape"], t.name
        assert torch.equal(t.exp_avg, _as(ref, "exp_avg")), t.name
        assert torch.equal(t.exp_avg_sq, _as(ref, "exp_avg_sq")), t.name
        assert torch.equal(t.param, _as(ref, "fp32")), t.name  # fp32 master weights
        assert t.step == 3
        seen.add(t.name)
    assert seen == set(truth["tensors"])


@pytest.mark.parametrize("cfg", ["z1_fp32", "z3_bf16", "z3_fp32_subgroups", "z3_fp32_universal"])
def test_per_group_hyperparameters(cfg):
    ck = open_checkpoint(_root(cfg))
    by_name = {e.name: e.hyper for e in ck.entries}
    assert (by_name["0.weight"]["beta2"], by_name["0.weight"]["weight_decay"]) == (0.99, 0.1)
    assert (by_name["2.bias"]["beta2"], by_name["2.bias"]["weight_decay"]) == (0.95, 0.0)
    assert {h["eps"] for h in by_name.values()} == {1e-7}


@pytest.mark.parametrize("cfg", ["z2_bf16", "z3_fp32", "hf_z2_fp32"])
def test_statistics_equal_float64_reference(cfg):
    s = summarize_checkpoint(_root(cfg))
    for t in s.tensors:
        ref = TRUTH[cfg]["tensors"][t.name]
        assert math.isclose(t.v_mean, ref["v_mean"], rel_tol=1e-6), t.name
        assert math.isclose(t.v_max, ref["v_max"], rel_tol=1e-7), t.name
        assert math.isclose(t.m_abs_mean, ref["m_abs_mean"], rel_tol=1e-6), t.name


def test_every_path_form_opens_the_same_checkpoint():
    # the save directory (its `latest`), the tag directory, and HF's checkpoint-N/
    a = open_checkpoint(FIX / "z2_fp32")
    b = open_checkpoint(FIX / "z2_fp32" / "global_step3")
    assert [e.name for e in a.entries] == [e.name for e in b.entries]
    hf = open_checkpoint(FIX / "hf_z2_fp32" / "checkpoint-3")
    assert "lm_head.weight" not in {e.name for e in hf.entries}  # tied to transformer.wte.weight
    assert "transformer.wte.weight" in {e.name for e in hf.entries}


def test_discovery_finds_every_tag_directory():
    found = find_checkpoints(FIX)
    rel = sorted(str(p.relative_to(FIX)) for p in found)
    assert rel == sorted(
        [f"{c}/global_step3" for c in LAYOUT if not c.endswith("universal") and not c.startswith("hf_")]
        + ["hf_z2_fp32/checkpoint-3/global_step3"]
        + [f"{c}/global_step3_universal" for c in LAYOUT if c.endswith("universal")]
    )


def _copy(cfg: str, tmp_path: Path) -> Path:
    dst = tmp_path / cfg
    shutil.copytree(FIX / cfg, dst)
    return dst


@pytest.mark.parametrize("cfg", ["z3_fp32", "z3_bf16"])
def test_fused_adam_group_step(cfg, tmp_path):
    """On GPUs DeepSpeed's default optimizer is its FusedAdam, which counts ``group['step']`` per param group
    and keeps no step in the partitions' state. The fixture's partitions rewritten so (DeepSpeed's own
    classes in them replaced by plain values, to re-save them here; ZeRO-3 ones, whose partitions need no
    DeepSpeed class to be read — ZeRO-1/2 share the step code) read as DeepSpeed's truth with step 3:
    before, the tensors had no step and their √v̂ went without bias correction."""
    from adamdiag.io.checkpoints import torch_load
    from adamdiag.io.checkpoints.deepspeed import SAFE_GLOBALS

    d = _copy(cfg, tmp_path)
    for f in (d / "global_step3").glob("*optim_states.pt"):
        obj, _ = torch_load(f, trust=False, extra_globals=SAFE_GLOBALS)
        osd = obj["optimizer_state_dict"]
        osd["loss_scaler"], osd["zero_stage"] = None, int(osd["zero_stage"])
        base = osd["optimizer_state_dict" if "optimizer_state_dict" in osd else "base_optimizer_state"]
        steps = {int(st.pop("step")) for st in base["state"].values()}
        assert steps == {3}
        for g in base["param_groups"]:
            g["step"], g["bias_correction"] = 3, True
        torch.save(obj, f.with_suffix(".new"))  # the loaded tensors map the old file: not written over
        f.with_suffix(".new").replace(f)
    ck = open_checkpoint(d)
    assert (ck.step, ck.optimizer_step) == (3, 3)
    for t in ck.tensors():
        ref = TRUTH[cfg]["tensors"][t.name]
        assert t.step == 3 and torch.equal(t.exp_avg_sq, _as(ref, "exp_avg_sq")), t.name
    fused = summarize_checkpoint(d)
    plain = summarize_checkpoint(_root(cfg))
    assert [(t.name, t.step, t.sqrt_vhat_q, t.update_rms) for t in fused.tensors] == [
        (t.name, t.step, t.sqrt_vhat_q, t.update_rms) for t in plain.tensors
    ]


def test_missing_rank_partition_is_named(tmp_path):
    d = _copy("z2_fp32", tmp_path)
    (d / "global_step3" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    (d / "global_step3" / "zero_pp_rank_2_mp_rank_00_optim_states.pt").write_bytes(b"")
    with pytest.raises(InputError, match=r"rank\(s\) \[1\] are missing"):
        open_checkpoint(d)


def test_latest_naming_a_missing_tag(tmp_path):
    d = _copy("z1_fp32", tmp_path)
    (d / "latest").write_text("global_step9")
    with pytest.raises(InputError, match="names 'global_step9'"):
        open_checkpoint(d)


def test_truncated_partition_is_one_line_error(tmp_path):
    d = _copy("z3_fp32", tmp_path)
    f = d / "global_step3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    f.write_bytes(f.read_bytes()[:2000])
    with pytest.raises(InputError) as e:
        list(open_checkpoint(d).tensors())
    assert "\n" not in str(e.value) and "zero_pp_rank_0" in str(e.value)


def test_other_globals_are_still_refused_by_name(tmp_path):
    # A global outside torch's list, our data-only extras and DeepSpeed's classes is still refused by name.
    d = _copy("z1_fp32", tmp_path)
    ms = d / "global_step3" / "mp_rank_00_model_states.pt"
    obj = torch.load(ms, weights_only=True)
    obj["ratio"] = fractions.Fraction(1, 3)
    torch.save(obj, ms)
    with pytest.raises(UntrustedCheckpointError, match=r"GLOBAL fractions\.Fraction"):
        open_checkpoint(d)


# --- with deepspeed installed: files it writes in other forms ---------------------------------------
@needs_deepspeed
def test_enum_members_pickled_by_python_3_11_2_and_unknown_deepspeed_classes(tmp_path, capsys):
    pytest.importorskip("deepspeed")
    import enum
    import pickle
    import types

    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    class Debian311Pickler(pickle.Pickler):
        """Enum members reduced as CPython 3.11.0-3.11.4's Enum.__reduce_ex__ does."""

        def reducer_override(self, obj):
            if isinstance(obj, enum.Enum):
                return getattr, (type(obj), obj.name)
            return NotImplemented

    d = _copy("z2_fp32", tmp_path)
    files = sorted((d / "global_step3").glob("zero_pp_rank_*_optim_states.pt"))
    mod = types.SimpleNamespace(Pickler=Debian311Pickler, __name__="pickle")
    for f in files:
        obj = torch.load(f, weights_only=False)  # our own fixture, with deepspeed present
        torch.save(obj, f, pickle_module=mod)
    assert b"getattr" in files[0].read_bytes()
    ck = open_checkpoint(d)
    ref = TRUTH["z2_fp32"]["tensors"]
    assert all(torch.equal(t.exp_avg_sq, _as(ref[t.name], "exp_avg_sq")) for t in ck.tensors())

    # a DeepSpeed class in the file (an older engine's pickled zero_config): read inertly, said on stderr, the
    # moments the same (was: refused as untrusted, before the inert loader)
    obj = torch.load(files[0], weights_only=False)
    obj["zero_config"] = DeepSpeedZeroConfig()
    torch.save(obj, files[0])
    ck = open_checkpoint(d)
    assert all(torch.equal(t.exp_avg_sq, _as(ref[t.name], "exp_avg_sq")) for t in ck.tensors())
    err = capsys.readouterr().err
    assert "deepspeed.runtime.zero.config.DeepSpeedZeroConfig" in err and "inert stand-ins" in err


@pytest.mark.slow
@needs_deepspeed
def test_live_two_rank_zero2_run(tmp_path):
    """The generator end to end: a live 2-rank ZeRO-2 run, read back and compared."""
    pytest.importorskip("deepspeed")
    import make_deepspeed_fixtures as gen

    assert gen.main([str(tmp_path), "--only", "z2_bf16"]) == 0
    truth = json.loads((tmp_path / "truth.json").read_text())["z2_bf16"]
    for t in open_checkpoint(tmp_path / "z2_bf16").tensors():
        assert torch.equal(t.exp_avg, _as(truth["tensors"][t.name], "exp_avg")), t.name


def test_crc_of_the_partitions_behind_a_reassembled_tensor(tmp_path):
    """A flipped bit in rank 1's exp_avg_sq partition: the tensors cut from it are flagged (AD403),
    though what the statistics read is a copy put together from both ranks."""
    from adamdiag.io.checkpoints import torch_load
    from adamdiag.io.checkpoints.deepspeed import SAFE_GLOBALS

    d = _copy("z2_fp32", tmp_path)
    f = d / "global_step3" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    obj, _ = torch_load(f, trust=False, extra_globals=SAFE_GLOBALS)
    data = obj["optimizer_state_dict"]["base_optimizer_state"]["state"][0]["exp_avg_sq"].numpy().tobytes()
    raw = bytearray(f.read_bytes())
    raw[raw.index(data) + 4] ^= 0x01  # the 2nd element of group 0's partition on rank 1
    f.write_bytes(bytes(raw))
    s = summarize_checkpoint(d)
    hit = {t.label for t in s.tensors if t.corrupt}
    # a CRC covers a whole member: rank 1's part of group 0 holds the tail of 0.weight and all of
    # 2.weight, so both are flagged; group 1 and the tensors wholly on rank 0 are not
    assert hit == {"0.weight", "2.weight"}
    assert any("AD403" in w and "`0.weight`" in w and "exp_avg_sq" in w for w in s.warnings)
    assert not any(t.corrupt for t in summarize_checkpoint(FIX / "z2_fp32").tensors)


@needs_deepspeed
def test_trusted_load_of_a_partition_with_other_globals_needs_no_deepspeed(tmp_path, monkeypatch):
    """--trust-checkpoint (a fractions.Fraction in a partition) loads DeepSpeed's classes as the
    stand-ins too: the file opens where deepspeed is not installed."""
    pytest.importorskip("deepspeed")
    d = _copy("z1_fp32", tmp_path)
    f = d / "global_step3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    obj = torch.load(f, weights_only=False)  # our own fixture, with deepspeed present
    obj["ratio"] = fractions.Fraction(1, 3)
    torch.save(obj, f)
    for name in [m for m in sys.modules if m == "deepspeed" or m.startswith("deepspeed.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # from here on, as if it were not installed
    with pytest.raises(UntrustedCheckpointError, match=r"GLOBAL fractions\.Fraction"):
        open_checkpoint(d)
    ck = open_checkpoint(d, trust=True)
    ref = TRUTH["z1_fp32"]["tensors"]
    assert all(torch.equal(t.exp_avg, _as(ref[t.name], "exp_avg")) for t in ck.tensors())
