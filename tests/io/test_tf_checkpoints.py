"""TensorFlow / Keras checkpoints read without TensorFlow, checked against what TensorFlow itself read.

The fixtures under tests/fixtures/tf were written by TF 2.21 / Keras 3.15
(tools/runlab/make_tf_fixtures.py); expected.json holds float64 numpy statistics of the tensors as
``tf.train.load_checkpoint`` / h5py returned them. Quantiles: adamdiag reports order statistics
(element round(q·(n-1)) of the sorted values) = numpy's ``method='nearest'``, recorded as
``sqrt_v_q_nearest`` (of the un-corrected √v; √v̂ = √v/√(1-β2^t)). The default-``linear`` ones are
recorded too (``sqrt_v_q_linear``) and must bracket ours.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamdiag.cli import app

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "tf"
EXPECTED = json.loads((FIX / "expected.json").read_text())
runner = CliRunner()
REL = 1e-6


def inspect_json(*paths: Path | str) -> dict:
    res = runner.invoke(app, ["inspect", *map(str, paths), "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=0.0)


def check(
    ck: dict,
    exp: dict,
    names: list[str],
    *,
    bc2: float | None = None,
    amsgrad: bool = False,
    hyper: dict | None = None,
) -> None:
    """One inspected checkpoint against its expected record (tensors in the expected order);
    ``hyper``: the hyperparameters adamdiag is expected to use where they differ from the run's
    (defaults assumed for values no file stores)."""
    assert ck["convention"] == "tf"
    assert ck["step"] == exp["step"]
    by_name = {t["name"]: t for t in ck["tensors"]}
    assert sorted(by_name) == sorted(names)
    hyp = {**exp["hyper"], **(hyper or {})}
    beta2 = hyp["beta2"]
    if bc2 is None:
        bc2 = 1.0 - beta2 ** exp["step"]
    for name, e in zip(names, exp["tensors"]):
        t = by_name[name]
        assert t["shape"] == e["shape"] and t["numel"] == e["numel"]
        assert t["step"] == exp["step"]
        plain = e.get("v_plain", e) if amsgrad else e  # v_mean/v_max are of v; quantiles of the denominator
        assert close(t["v_mean"], plain["v_mean"]), (name, t["v_mean"], plain["v_mean"])
        assert close(t["v_max"], plain["v_max"])
        assert close(t["m_abs_mean"], e["m_abs_mean"])
        for q, val in e["sqrt_v_q_nearest"].items():
            assert close(t["sqrt_vhat_q"][q], val / math.sqrt(bc2)), (name, q)
            lin = e["sqrt_v_q_linear"]
            assert min(lin[q], val) <= val <= max(lin[q], val)
        for k in ("beta2", "eps", "beta1"):
            assert close(t[k], hyp[k]), (k, t[k], hyp[k])
        if hyp.get("lr") is not None:
            assert close(t["lr"], hyp["lr"])
        else:
            assert t["lr"] is None and t["lr_source"] == "unknown"
            assert t["update_rms"] is None


def test_tf1_saver_prefix_files_checkpoint_file_and_directory():
    exp = EXPECTED["tf1"]
    # the directory: both checkpoints, sorted by step, with the decay-ratio pair
    data = inspect_json(FIX / "tf1")
    assert [c["step"] for c in data["checkpoints"]] == [30, 60]
    assert len(data["pairs"]) == 1 and data["pairs"][0]["to_step"] == 60
    for ck, key in zip(data["checkpoints"], ("model.ckpt-30", "model.ckpt-60")):
        check(ck, exp[key], [t["name"] for t in exp[key]["tensors"]])
        assert ck["layout"] == "tf1" and ck["name_mapping"] == "graph"
        assert all(t[f"{k}_source"] == "file" for t in ck["tensors"] for k in ("lr", "beta1", "beta2", "eps"))
    # every name a user may give: the prefix, each of its files, the checkpoint file (stale absolute
    # paths from the machine that wrote it: it names the latest)
    e = exp["model.ckpt-60"]
    forms = ["model.ckpt-60" + f for f in ("", ".index", ".meta", ".data-00000-of-00001")] + ["checkpoint"]
    data = inspect_json(*(FIX / "tf1" / f for f in forms))
    assert len(data["checkpoints"]) == len(forms)
    for ck in data["checkpoints"]:
        assert ck["path"].endswith("model.ckpt-60")
        check(ck, e, [t["name"] for t in e["tensors"]])
    assert sum(any("stale" in w for w in ck["warnings"]) for ck in data["checkpoints"]) == 1


def test_tf1_beta2_power_zero_step_from_suffix_and_no_bias_correction():
    e = EXPECTED["tf1_b2p0"]["model.ckpt-40"]
    assert e["beta2_power"] == 0.0
    (ck,) = inspect_json(FIX / "tf1_b2p0" / "model.ckpt-40")["checkpoints"]
    check(ck, e, [t["name"] for t in e["tensors"]], bc2=1.0)
    assert any("beta2_power is 0" in w and "bias correction is 1" in w for w in ck["warnings"])


def test_tf1_without_meta_hyperparameters_unknown(tmp_path):
    for f in (FIX / "tf1").glob("model.ckpt-60.*"):
        if not f.name.endswith(".meta"):
            shutil.copy(f, tmp_path / f.name)
    (ck,) = inspect_json(tmp_path / "model.ckpt-60")["checkpoints"]
    assert ck["name_mapping"] == "slot-names" and ck["step"] == 60  # step from the -N suffix
    t = ck["tensors"][0]
    assert t["eps"] is None and t["eps_source"] == "unknown" and t["sqrt_vhat_q"]["p50"] is None
    e = {x["name"]: x for x in EXPECTED["tf1"]["model.ckpt-60"]["tensors"]}[t["name"]]
    assert close(t["v_mean"], e["v_mean"]) and close(t["m_abs_mean"], e["m_abs_mean"])


def test_tf1_index_of_many_blocks_without_meta():
    """300 variables: an .index of several table blocks. Read through the checkpoint API (not the
    CLI, whose per-tensor overheads would dominate) and compared with what TensorFlow read."""
    import numpy as np

    from adamdiag.io.checkpoints import open_checkpoint

    e = EXPECTED["tf1_many"]["model.ckpt-5"]
    assert e["index_bytes"] > 4 * 4096  # several 4 KiB table blocks
    ck = open_checkpoint(FIX / "tf1_many" / "model.ckpt-5")
    assert ck.step == 5 and ck.name_mapping == "slot-names" and ck.convention == "tf"
    got = {t.name: t for t in ck.tensors(with_params=False)}
    assert len(got) == len(e["tensors"]) == 300
    for x in e["tensors"]:
        t = got[x["name"]]
        m, v = t.exp_avg.double().numpy(), t.exp_avg_sq.double().numpy()
        assert close(float(v.mean()), x["v_mean"]) and close(float(v.max()), x["v_max"])
        assert close(float(np.abs(m).mean()), x["m_abs_mean"]) and math.isnan(t.eps)
        assert t.hyper_source == {
            "lr": "unknown",
            "beta1": "unknown",
            "beta2": "unknown",
            "eps": "unknown",
            "weight_decay": "default",
        }


def test_tf1_rmsprop_slots_are_not_read_as_adam():
    err = _one_line_exit_2(str(FIX / "tf1_rmsprop" / "model.ckpt-3"))
    assert "RMSProp" in err and "not an Adam" in err


def test_tf1_resource_variables_global_step_and_placeholder_lr():
    e = EXPECTED["tf1_resource"]["model.ckpt-50"]
    assert e["global_step"] == e["step"] == 50
    (ck,) = inspect_json(FIX / "tf1_resource" / "model.ckpt-50")["checkpoints"]
    check(ck, e, [t["name"] for t in e["tensors"]], hyper={"lr": None})
    assert ck["name_mapping"] == "graph"  # from the ResourceApplyAdam ops
    assert any("lr is computed in the graph" in w for w in ck["warnings"])
    assert all(t["update_rms"] is None for t in ck["tensors"])  # needs lr: null, not a guess


@pytest.mark.parametrize("sub", ["tf2_tfkeras", "tf2_legacy"])
def test_tf2_tf_keras_layouts(sub):
    e = EXPECTED[sub]["ckpt-1"]
    names = [t["name"] for t in e["tensors"]]
    (ck,) = inspect_json(FIX / sub / "ckpt-1")["checkpoints"]
    t0 = ck["tensors"][0]
    if sub == "tf2_legacy":  # β1/β2 stored as variables; eps a Python float: tf.keras' default
        check(ck, e, names)
        assert t0["beta2_source"] == "file" and t0["eps_source"] == "default"
    else:  # only lr stored: the run's β2 = 0.995 is not knowable; the assumed default is flagged
        check(ck, e, names, hyper={"beta2": 0.999})
        assert t0["beta2_source"] == "default"


def test_tf2_object_based_keras3():
    e = EXPECTED["tf2"]["ckpt-1"]
    names = [t["name"] for t in e["tensors"]]  # Keras variable paths, from the object graph
    for form in ("ckpt-1", "ckpt-1.index", "checkpoint"):
        (ck,) = inspect_json(FIX / "tf2" / form)["checkpoints"]
        check(ck, e, names)
        assert ck["name_mapping"] == "object-graph"
        assert ck["tensors"][0]["eps_source"] == "default" and ck["tensors"][0]["lr_source"] == "file"


@pytest.mark.parametrize("variant", ["plain", "schedule", "amsgrad", "ema_accum"])
def test_keras_files(variant):
    e = EXPECTED["keras"][variant]
    amsgrad = e["hyper"]["amsgrad"]
    # .keras: names from config.json (layer name / variable), hyperparameters from the config
    (ck,) = inspect_json(FIX / "keras" / f"{variant}.keras")["checkpoints"]
    names = [t["name"].split("/", 1)[1] for t in e["tensors"]]  # Keras paths carry the model's name
    # a schedule's lr at the checkpoint's step, computed from config.json (= Keras' own value)
    check(ck, e, names, amsgrad=amsgrad, hyper={"lr": e["hyper"]["lr_at_step"]})
    assert ck["name_mapping"] == "config-shapes"
    assert all(t["eps_source"] == "file" for t in ck["tensors"])
    # .weights.h5: no config: stable labels, Keras' defaults flagged (eps 1e-7, not 1e-8)
    (ck,) = inspect_json(FIX / "keras" / f"{variant}.weights.h5")["checkpoints"]
    assert [t["name"] for t in ck["tensors"]] == [f"trainable_variable_{i}" for i in range(len(names))]
    assert all(t["eps"] == 1e-7 and t["eps_source"] == "default" for t in ck["tensors"])
    labels = [f"trainable_variable_{i}" for i in range(len(names))]
    if variant == "ema_accum":  # without config, vars/0 counts batches (2 per update), said in a warning
        assert ck["step"] == 2 * e["step"] and any("gradient accumulation" in w for w in ck["warnings"])
        by = {t["name"]: t for t in ck["tensors"]}
        assert all(close(by[lab]["v_mean"], x["v_mean"]) for lab, x in zip(labels, e["tensors"]))
        return
    check(ck, e, labels, amsgrad=amsgrad, hyper={"beta2": 0.999, "eps": 1e-7, "lr": e["hyper"]["lr"]})


KERAS_H5 = ["k3_plain.h5", "k3_amsgrad.h5", "k3_schedule.h5", "k3_adamw.h5"] + [
    f"tfk_{v}.h5" for v in ("adam", "legacy", "amsgrad", "adamw")
]


@pytest.mark.parametrize("name", KERAS_H5)
def test_keras_hdf5_model_files(name):
    """model.save("x.h5") by Keras 3 (legacy format) and tf.keras 2 (its Adam and optimizers.legacy.Adam):
    every slot named, matched to its model weight, hyperparameters from training_config — equal to what the
    optimizer held when it was saved."""
    pytest.importorskip("h5py")
    if name not in EXPECTED["keras_h5"]:
        pytest.skip("written without tf_keras")
    e = EXPECTED["keras_h5"][name]
    (ck,) = inspect_json(FIX / "keras_h5" / name)["checkpoints"]
    names = [t["name"] for t in e["tensors"]]
    check(ck, e, names, amsgrad=e["hyper"]["amsgrad"], hyper={"lr": e["hyper"]["lr_at_step"]})
    assert ck["layout"] == "keras-h5" and ck["name_mapping"] == "slot-names"
    assert ck["optimizer"] == ("AdamW" if "adamw" in name else "Adam")
    for t in ck["tensors"]:
        assert t["eps_source"] == t["beta2_source"] == "file"
        assert math.isclose(t["weight_decay"], e["hyper"]["weight_decay"])
    if e["hyper"]["lr"] is None:  # a schedule, evaluated at the step as Keras does
        assert any("ExponentialDecay schedule" in w for w in ck["warnings"])


@pytest.mark.parametrize("name", ["tfk_adam_savedmodel", "tfk_legacy_savedmodel"])
def test_tf_keras_savedmodel_takes_beta2_and_eps_from_keras_metadata(name):
    """model.save(dir) / ModelCheckpoint(dir) with tf.keras: a SavedModel whose variables/ bundle is a TF2 checkpoint
    (read by its object graph) and whose keras_metadata.pb holds the optimizer's config — β2 0.995 and eps 1e-6 of
    the run, not Keras' defaults (which the bundle alone would have to assume)."""
    if name not in EXPECTED["keras_h5"]:
        pytest.skip("written without tf_keras")
    e = EXPECTED["keras_h5"][name]
    (ck,) = inspect_json(FIX / "keras_h5" / name)["checkpoints"]
    check(ck, e, [t["name"] for t in e["tensors"]])
    assert all(t["eps_source"] == t["beta2_source"] == "file" for t in ck["tensors"])
    assert any("keras_metadata.pb" in w for w in ck["warnings"])
    assert not any("defaults assumed" in w or "default 1e-7 assumed" in w for w in ck["warnings"])


def test_keras_hdf5_model_file_parameters_are_the_saved_weights():
    """The parameter beside each slot is the model weight of the same name (what replay starts from)."""
    h5py = pytest.importorskip("h5py")
    from adamdiag.io.checkpoints import open_checkpoint

    for name, weights in (
        ("k3_plain.h5", "model_weights/{l}/net/{l}/{w}"),
        ("tfk_legacy.h5", "model_weights/{l}/{l}/{w}:0"),
    ):
        ck = open_checkpoint(FIX / "keras_h5" / name)
        with h5py.File(FIX / "keras_h5" / name, "r") as f:
            for e in ck.entries:
                layer, w = e.name.split("/")[-2:]
                got = ck._fetch_param(e.name)
                assert got is not None and tuple(got.shape) == e.shape
                assert (got.numpy() == f[weights.format(l=layer, w=w)][()]).all()


@pytest.mark.parametrize(
    "name,says",
    [
        ("tfk_sgd.h5", "optimizer is Keras SGD, not Adam/AdamW"),
        ("tfk_weights_only.h5", "weights-only HDF5 file (save_weights)"),
        ("tfk_no_optimizer.h5", "saved without its optimizer"),
    ],
)
def test_keras_hdf5_files_without_adam_state_are_refused(name, says):
    pytest.importorskip("h5py")
    if not (FIX / "keras_h5" / name).exists():
        pytest.skip("written without tf_keras")
    assert says in _one_line_exit_2(str(FIX / "keras_h5" / name))


def test_scan_style_discovery_finds_every_tf_layout():
    from adamdiag.io.checkpoints import find_checkpoints

    found = {p.relative_to(FIX).as_posix() for p in find_checkpoints(FIX)}
    assert {"tf1/model.ckpt-30", "tf1/model.ckpt-60", "tf1_b2p0/model.ckpt-40", "tf2/ckpt-1"} <= found
    assert {"tf1_resource/model.ckpt-50", "tf2_tfkeras/ckpt-1", "tf2_legacy/ckpt-1", "tf1_many/model.ckpt-5"} <= found
    assert {f"keras/{v}.{s}" for v in ("plain", "schedule", "amsgrad") for s in ("keras", "weights.h5")} <= found


def _one_line_exit_2(*args: str) -> str:
    res = runner.invoke(app, ["inspect", *args])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "enforce fail" not in err, err
    return err


def test_crc_mismatch_detected(tmp_path):
    for f in (FIX / "tf1").glob("model.ckpt-60.*"):
        shutil.copy(f, tmp_path / f.name)
    data = tmp_path / "model.ckpt-60.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit, inside some tensor
    data.write_bytes(bytes(raw))
    assert "crc32c" in _one_line_exit_2(str(tmp_path / "model.ckpt-60"))
    before = data.read_bytes()
    assert before == bytes(raw)  # the input is not modified


def test_bad_and_ambiguous_inputs(tmp_path):
    # a damaged index
    for f in (FIX / "tf1").glob("model.ckpt-30.*"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "model.ckpt-30.index").write_bytes(b"\0" * 100)
    assert "not a readable TensorFlow checkpoint index" in _one_line_exit_2(str(tmp_path / "model.ckpt-30"))
    # a zip that is no .keras (used to leak torch's C++ message)
    bad = tmp_path / "epoch020.keras"
    bad.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    assert "not a Keras 3 .keras file" in _one_line_exit_2(str(bad))
    # the .data/.meta of a prefix without its .index: said so (not "no such file")
    (tmp_path / "model.ckpt-30.index").unlink()
    assert "without its .index" in _one_line_exit_2(str(tmp_path / "model.ckpt-30"))
    # HDF5 model files that hold no usable Adam state
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "old.h5", "w") as h:  # no training_config
        h["model_weights/x"] = [1.0]
        h["optimizer_weights/y"] = [1.0]
    assert "saved without its optimizer" in _one_line_exit_2(str(tmp_path / "old.h5"))
    with h5py.File(tmp_path / "keras22.h5", "w") as h:  # standalone Keras <= 2.3: unnamed slots
        h.attrs["training_config"] = json.dumps({"optimizer_config": {"class_name": "Adam", "config": {}}})
        h["model_weights/x"] = [1.0]
        h["optimizer_weights/training/Adam/Variable:0"] = [1.0]
        h["optimizer_weights"].attrs["weight_names"] = [b"training/Adam/Variable:0"]
    assert "not named like a Keras Adam's slots" in _one_line_exit_2(str(tmp_path / "keras22.h5"))
    # a checkpoint file naming nothing that exists
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "checkpoint").write_text('model_checkpoint_path: "/nowhere/model.ckpt-1"\n')
    assert "names no checkpoint" in _one_line_exit_2(str(tmp_path / "sub" / "checkpoint"))


def test_keras_layout_ambiguous_without_config_is_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    import numpy as np

    # iterations, lr, then 6 tensors of one shape: 3 (m, v) pairs, or 2 variables × (m, v, v̂ amsgrad),
    # or 1 variable with accumulator + EMA + (m, v) ... — different pairings: refuse, never guess.
    f = tmp_path / "same.weights.h5"
    with h5py.File(f, "w") as h:
        g = h.create_group("optimizer/vars")
        g["0"] = np.array(5, np.int64)
        g["1"] = np.array(0.01, np.float32)
        for k in range(2, 8):
            g[str(k)] = np.ones(3, np.float32)
    assert "refusing to guess" in _one_line_exit_2(str(f))


def test_layouts_and_subsequence_matching_units():
    from adamdiag.io.checkpoints.keras import count_embeddings, layouts

    i, f = "int64", "float32"
    a, b = (3, 25), (25,)
    # plain (iterations, lr, m0 v0 m1 v1), schedule (no lr), amsgrad (+ v̂0 v̂1)
    assert [(x["header"], x["amsgrad"]) for x in layouts([(), (), a, a, b, b], [i, f, f, f, f, f])] == [(2, False)]
    assert [x["m"] for x in layouts([(), a, a, b, b], [i, f, f, f, f])] == [[1, 3]]
    ams = layouts([(), (), a, a, b, b, a, b], [i, f, f, f, f, f, f, f])
    assert [(x["amsgrad"], x["vhat"]) for x in ams] == [(True, [6, 7])]
    # trainables among all model variables (BatchNorm's moving stats are not trainable)
    assert count_embeddings([b, b], [b, b, b, b]) == (2, [0, 1])  # ambiguous
    assert count_embeddings([a, b], [a, b, (4,)]) == (1, [0, 1])


def test_keras_without_h5py_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py → ImportError
    err = _one_line_exit_2(str(FIX / "keras" / "plain.weights.h5"))
    assert "pip install 'adamdiag[keras]'" in err


def test_no_torch_cpp_message_for_a_foreign_zip(tmp_path):
    import zipfile

    f = tmp_path / "model.pt"  # a zip, but not torch's layout (like a .keras renamed)
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("metadata.json", "{}")
    err = _one_line_exit_2(str(f))
    assert "not a readable torch checkpoint" in err and "inline_container" not in err


def test_scan_uses_tf1_checkpoints_of_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for f in (FIX / "logs_f1" / "train").iterdir():
        shutil.copy(f, run / f.name)
    for f in (FIX / "tf1").iterdir():
        shutil.copy(f, run / f.name)
    res = runner.invoke(app, ["scan", str(run), "--format", "json"])
    assert res.exit_code in (0, 1), res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert "checkpoints" in r["sources"] and r["convention"] == "tf"


@pytest.mark.parametrize(
    "sub,name,damaged",
    [
        ("tf1", "model.ckpt-60", ".index"),
        ("tf1", "model.ckpt-60", ".meta"),
        ("tf2", "ckpt-1", ".index"),
        ("tf2", "ckpt-1", ".data-00000-of-00001"),
        ("keras", "plain.keras", ""),
        ("keras", "amsgrad.weights.h5", ""),
        ("keras_h5", "tfk_legacy.h5", ""),
        ("keras_h5", "k3_amsgrad.h5", ""),
    ],
)
def test_damaged_files_give_input_errors_only(tmp_path, sub, name, damaged):
    """Flipped bits, truncation, zeroed runs: an InputError (one line at the CLI) or a clean read
    (a flip in unused bytes), never another exception."""
    import random

    from adamdiag.errors import InputError
    from adamdiag.io.checkpoints import open_checkpoint

    rng = random.Random(f"{sub}{name}{damaged}")
    for trial in range(6):
        d = tmp_path / str(trial)
        shutil.copytree(FIX / sub, d)
        target = d / (name + damaged)
        b = bytearray(target.read_bytes())
        if trial % 3 == 0:
            b = b[: rng.randrange(len(b))]
        else:
            for _ in range(1 + trial):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8) if trial % 3 == 1 else b[i]
        target.write_bytes(bytes(b))
        try:
            for _ in open_checkpoint(d / name).tensors():
                pass
        except InputError:
            pass


def test_tf_keras_savedmodel_with_damaged_keras_metadata_falls_back_to_the_defaults(tmp_path):
    """A keras_metadata.pb that does not parse (cut, garbage, a FIFO) leaves the bundle's reading as it was:
    Keras' defaults, said so — never an error for the checkpoint, never a hang."""
    import os

    src = FIX / "keras_h5" / "tfk_adam_savedmodel"
    if not src.is_dir():
        pytest.skip("written without tf_keras")
    for i, damage in enumerate(("cut", "garbage", "fifo")):
        d = tmp_path / str(i)
        shutil.copytree(src, d)
        meta = d / "keras_metadata.pb"
        if damage == "cut":
            meta.write_bytes(meta.read_bytes()[:100])
        elif damage == "garbage":
            meta.write_bytes(b"\xff" * 64)
        else:
            meta.unlink()
            os.mkfifo(meta)
        (ck,) = inspect_json(d)["checkpoints"]
        assert all(t["eps"] == 1e-7 and t["eps_source"] == "default" for t in ck["tensors"]), damage


@pytest.mark.parametrize(
    "run,name,layout",
    [
        ("k3_mixed", "k3_mixed.keras", "keras"),
        ("k3_mixed", "k3_mixed.weights.h5", "keras"),
        ("k3_mixed", "k3_mixed.h5", "keras-h5"),
        ("tfk_mixed", "tfk_mixed.h5", "keras-h5"),
        ("tfk_mixed", "tfk_mixed_savedmodel", "tf2"),
        ("tfk_mixed", "tfk_mixed_ckpt", "tf2"),
    ],
)
def test_mixed_precision_reads_the_wrapped_adam(run, name, layout):
    """Mixed precision: compile() wraps Adam in a LossScaleOptimizer, whose own iteration count stays 0 and whose
    variables come first (the .weights.h5 read as step 0 with the wrapper's scalars taken for Adam's; the .h5
    refused as 'LossScaleOptimizer, not Adam'; the tf.keras SavedModel/checkpoint refused: its slots are named
    m/<var>, without the optimizer's name). The inner Adam's state, step and hyperparameters are read."""
    pytest.importorskip("h5py")
    if run not in EXPECTED.get("keras_mixed", {}):
        pytest.skip("written without tf_keras")
    e = EXPECTED["keras_mixed"][run]
    (ck,) = inspect_json(FIX / "keras_h5" / "mixed" / name)["checkpoints"]
    assert ck["layout"] == layout and ck["step"] == e["step"] > 0
    names = [t["name"] for t in e["tensors"]]
    if name.endswith(".weights.h5"):  # no names and no config in it: labels, Keras' defaults (eps 1e-7, flagged)
        names = [f"trainable_variable_{i}" for i in range(len(names))]
        check(ck, e, names, hyper={"eps": 1e-7})
    elif name == "k3_mixed.keras":
        check(ck, e, [n.split("/", 1)[1] for n in names])  # .keras names: layer/variable
    elif name == "tfk_mixed_ckpt":  # a TF2 checkpoint keeps no β2/eps: Keras' defaults, flagged
        check(ck, e, names, hyper={"beta2": 0.999, "eps": 1e-7})
    else:
        check(ck, e, names)
    if layout != "tf2":
        assert any("LossScaleOptimizer" in w for w in ck["warnings"])
