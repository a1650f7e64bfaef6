"""GAN checkpoints: two models and two Adam optimizers in one ``torch.save`` file (review finding F18).

A real tiny GAN is trained (generator with BatchNorm, discriminator with BatchNorm: buffers in the
state dicts that are not parameters), with the two Adams GANs use — different betas, eps and lr — and
saved the ways GAN code saves: PyTorch's DCGAN example (``netG``/``netD``/``optimizerG``/``optimizerD``),
``G``/``D``/``opt_G``/``opt_D``, ``generator``/``g_optimizer``, ``gen``/``gen_opt``, StyleGAN2's
``g``/``d``/``g_ema``/``g_optim``/``d_optim`` and CycleGAN's ``G_A``/``G_B``/``D_A``/``D_B`` with one optimizer
over ``chain(G_A.parameters(), G_B.parameters())``. Every tensor must carry the name of the parameter it
belongs to (``<model key>.<parameter>``), its own optimizer's hyperparameters, and the values the live
optimizer held; where the pairing cannot be verified, positional names — never a wrong one.
(The Lightning GAN with two optimizers in ``optimizer_states`` is tests/io/test_multi_optimizer.py.)"""

from __future__ import annotations

import csv
import io
import itertools
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.errors import InputError
from adamdiag.io.checkpoints import open_checkpoint
from adamdiag.io.checkpoints.pairing import affinity, model_prefix, role_words
from adamdiag.pipeline.summary import compare_checkpoints
from adamdiag.replay.checkpoint import load_replay_checkpoint

HYPER = {"G": dict(lr=2e-4, betas=(0.5, 0.999), eps=1e-8), "D": dict(lr=1e-4, betas=(0.5, 0.99), eps=1e-6)}


def generator() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh())


def discriminator() -> nn.Module:
    return nn.Sequential(
        nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.LeakyReLU(0.2), nn.Linear(16, 1)
    )


def train_gan(steps: int, *, named: bool = False):
    """The DCGAN loop: a discriminator step on real and fake, then a generator step."""
    torch.manual_seed(0)
    G, D = generator(), discriminator()
    params = (lambda m: m.named_parameters()) if named else (lambda m: m.parameters())
    optG, optD = torch.optim.Adam(params(G), **HYPER["G"]), torch.optim.Adam(params(D), **HYPER["D"])
    crit, g = nn.BCEWithLogitsLoss(), torch.Generator().manual_seed(1)
    for _ in range(steps):
        real, z = torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)
        fake = G(z)
        optD.zero_grad()
        (crit(D(real), torch.ones(16, 1)) + crit(D(fake.detach()), torch.zeros(16, 1))).backward()
        optD.step()
        optG.zero_grad()
        crit(D(fake), torch.ones(16, 1)).backward()
        optG.step()
    return G, D, optG, optD


def save_dcgan(path, G, D, optG, optD, **extra):
    """The DCGAN script's checkpoint, keys in its order: ``{**extra, netG, netD, optimizerG, optimizerD}``."""
    parts = {
        "netG": G.state_dict(),
        "netD": D.state_dict(),
        "optimizerG": optG.state_dict(),
        "optimizerD": optD.state_dict(),
    }
    torch.save({**extra, **parts}, path)
    return path


def truth(prefix: str, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, dict]:
    """What the live optimizer holds, by the name the reader must give: ``<model key>.<parameter>``."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        f"{prefix}.{names[id(p)]}": {"v": st["exp_avg_sq"].clone(), "m": st["exp_avg"].clone(), "p": p.detach().clone()}
        for p, st in opt.state.items()
    }


def check(path, want: dict[str, dict], hyper: dict[str, dict], key_of: dict[str, str]) -> None:
    """Every tensor: its name, its values (m, v and the parameter), its own optimizer's lr/β/eps."""
    ck = open_checkpoint(path)
    assert ck.name_mapping == "model-order", ck.warnings
    seen = set()
    for t in ck.tensors():
        ref = want[t.name]  # a wrong or positional name fails here
        assert torch.equal(t.exp_avg_sq, ref["v"]) and torch.equal(t.exp_avg, ref["m"]), t.name
        assert torch.equal(t.param, ref["p"]), t.name
        role = t.name.split(".")[0]
        assert t.optimizer["key"] == key_of[role]
        h = hyper[role]
        assert (t.lr, (t.beta1, t.beta2), t.eps) == (h["lr"], h["betas"], h["eps"]), t.name
        seen.add(t.name)
    assert seen == set(want)


@pytest.fixture(scope="module")
def gan():
    return train_gan(5)


@pytest.mark.parametrize(
    "keys",
    [
        ("netG", "netD", "optimizerG", "optimizerD"),  # PyTorch's examples/dcgan
        ("G", "D", "opt_G", "opt_D"),
        ("generator", "discriminator", "g_optimizer", "d_optimizer"),
        ("gen", "disc", "gen_opt", "disc_opt"),
    ],
)
def test_each_optimizer_is_paired_with_its_model(gan, tmp_path, keys):
    G, D, optG, optD = gan
    kg, kd, og, od = keys
    path = tmp_path / "checkpoint.pth"
    # the discriminator saved first: pairing goes by key and shapes, not by position in the file
    torch.save({"epoch": 5, kd: D.state_dict(), kg: G.state_dict(), og: optG.state_dict(), od: optD.state_dict()}, path)
    want = truth(kg, G, optG) | truth(kd, D, optD)
    check(path, want, {kg: HYPER["G"], kd: HYPER["D"]}, {kg: og, kd: od})
    ck = open_checkpoint(path)
    assert any(f"{og} → {kg}, {od} → {kd}" in w for w in ck.warnings), ck.warnings


def test_cyclegan_one_optimizer_over_two_generators(tmp_path):
    torch.manual_seed(0)
    nets = {k: (generator() if k[0] == "G" else discriminator()) for k in ("G_A", "G_B", "D_A", "D_B")}
    opt_G = torch.optim.Adam(itertools.chain(nets["G_A"].parameters(), nets["G_B"].parameters()), **HYPER["G"])
    opt_D = torch.optim.Adam(itertools.chain(nets["D_A"].parameters(), nets["D_B"].parameters()), **HYPER["D"])
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        z, real = torch.randn(16, 4, generator=g), torch.randn(16, 8, generator=g)
        opt_G.zero_grad()
        (nets["D_B"](nets["G_A"](z)).pow(2).mean() + nets["D_A"](nets["G_B"](z)).pow(2).mean()).backward()
        opt_G.step()
        opt_D.zero_grad()
        (nets["D_A"](real).pow(2).mean() + (nets["D_B"](real) - 1).pow(2).mean()).backward()
        opt_D.step()
    path = tmp_path / "latest_net.pth"
    torch.save(
        {
            **{k: m.state_dict() for k, m in nets.items()},
            "optimizer_G": opt_G.state_dict(),
            "optimizer_D": opt_D.state_dict(),
        },
        path,
    )
    want: dict[str, dict] = {}
    for k, m in nets.items():
        opt = opt_G if k[0] == "G" else opt_D
        names = {id(p): n for n, p in m.named_parameters()}
        want |= {
            f"{k}.{names[id(p)]}": {"v": st["exp_avg_sq"], "m": st["exp_avg"], "p": p.detach()}
            for p, st in opt.state.items()
            if id(p) in names
        }
    roles = {k: HYPER[k[0]] for k in nets}
    check(path, want, roles, {k: f"optimizer_{k[0]}" for k in nets})
    ck = open_checkpoint(path)
    # G_A and G_B have the same shapes: the order (the file's) cannot be checked, and it says so
    assert any("assume it steps G_A, then G_B" in w for w in ck.warnings), ck.warnings


def test_stylegan2_layout_pairs_g_optim_with_g_not_g_ema(gan, tmp_path):
    G, D, optG, optD = gan
    ema = generator()  # same shapes as G, other values: only the parameter values tell them apart
    path = tmp_path / "010000.pt"
    torch.save(
        {"g": G.state_dict(), "d": D.state_dict(), "g_ema": ema.state_dict(), "g_optim": optG.state_dict(),
         "d_optim": optD.state_dict(), "ada_aug_p": 0.0},
        path,
    )  # fmt: skip
    check(
        path,
        truth("g", G, optG) | truth("d", D, optD),
        {"g": HYPER["G"], "d": HYPER["D"]},
        {"g": "g_optim", "d": "d_optim"},
    )


def test_optimizers_built_from_named_parameters(tmp_path):
    # torch >= 2.6 saves param_names: both optimizers say "0.weight"; the model key keeps them apart
    G, D, optG, optD = train_gan(3, named=True)
    assert "param_names" in optG.state_dict()["param_groups"][0]
    path = tmp_path / "ckpt.pt"
    save_dcgan(path, G, D, optG, optD)
    ck = open_checkpoint(path)
    want = truth("netG", G, optG) | truth("netD", D, optD)
    assert ck.name_mapping == "param_names"
    got = {t.name: t for t in ck.tensors()}
    assert set(got) == set(want)
    for n, t in got.items():
        assert torch.equal(t.exp_avg_sq, want[n]["v"]) and torch.equal(t.param, want[n]["p"]), n


def test_models_under_the_wrong_keys_get_positional_names_not_wrong_ones(gan, tmp_path):
    G, D, optG, optD = gan
    path = tmp_path / "swapped.pth"
    # a script that saved G's weights under netD and the reverse: no optimizer fits the model its key names
    torch.save(
        {
            "netG": D.state_dict(),
            "netD": G.state_dict(),
            "optimizerG": optG.state_dict(),
            "optimizerD": optD.state_dict(),
        },
        path,
    )
    ck = open_checkpoint(path)
    names = [t.name for t in ck.tensors(with_params=False)]
    assert len(set(names)) == len(names) == len(optG.state) + len(optD.state)
    assert all(n.startswith(("optimizerG/group 0 / index ", "optimizerD/group 0 / index ")) for n in names), names
    assert sum("no model in the file" in w for w in ck.warnings) == 2
    # each keeps its own optimizer's eps (1e-8 for G, 1e-6 for D)
    assert {(t.optimizer["key"], t.eps) for t in ck.tensors(with_params=False)} == {
        ("optimizerG", 1e-8),
        ("optimizerD", 1e-6),
    }


def test_one_module_holding_both_networks_wins_over_a_copy_with_a_matching_key(tmp_path):
    # a training module's full state dict (gen.*, disc.*) and an EMA copy of the generator under 'gen':
    # the module holds every optimizer's parameters, so its names and values are used, not the copy's
    torch.manual_seed(0)
    module = nn.ModuleDict({"gen": generator(), "disc": discriminator()})
    optG = torch.optim.Adam(module["gen"].parameters(), **HYPER["G"])
    optD = torch.optim.Adam(module["disc"].parameters(), **HYPER["D"])
    for _ in range(2):
        for o in (optG, optD):
            o.zero_grad()
        module["disc"](module["gen"](torch.randn(16, 4))).pow(2).mean().backward()
        optG.step()
        optD.step()
    ema = generator()
    path = tmp_path / "last.pt"
    parts = {"optimizer_gen": optG.state_dict(), "optimizer_disc": optD.state_dict()}
    torch.save({"state_dict": module.state_dict(), "gen": ema.state_dict(), **parts}, path)
    want = truth("gen", module["gen"], optG) | truth("disc", module["disc"], optD)
    check(path, want, {"gen": HYPER["G"], "disc": HYPER["D"]}, {"gen": "optimizer_gen", "disc": "optimizer_disc"})


def test_no_model_in_the_file_labels_by_optimizer_and_position(gan, tmp_path):
    _, _, optG, optD = gan
    path = tmp_path / "optimizers.pt"
    torch.save({"optimizerG": optG.state_dict(), "optimizerD": optD.state_dict()}, path)
    labels = [t.label for t in open_checkpoint(path).tensors()]
    assert "optimizerG/group 0 / index 0" in labels and "optimizerD/group 0 / index 0" in labels
    assert len(set(labels)) == len(labels)


def test_adam_generator_with_sgd_discriminator(tmp_path):
    torch.manual_seed(0)
    G, D = generator(), discriminator()
    optG, optD = torch.optim.Adam(G.parameters(), **HYPER["G"]), torch.optim.SGD(D.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):
        for o in (optG, optD):
            o.zero_grad()
        D(G(torch.randn(16, 4))).mean().backward()
        optG.step()
        optD.step()
    path = tmp_path / "ckpt.pt"
    save_dcgan(path, G, D, optG, optD)
    check(path, truth("netG", G, optG), {"netG": HYPER["G"]}, {"netG": "optimizerG"})
    assert [o["key"] for o in open_checkpoint(path).other_optimizers] == ["optimizerD"]


def test_inspect_json_and_the_decay_ratio_view_of_two_gan_checkpoints(tmp_path):
    paths = []
    for steps in (4, 8):
        G, D, optG, optD = train_gan(steps)
        paths.append(save_dcgan(tmp_path / f"checkpoint_{steps}.pth", G, D, optG, optD, epoch=steps))
    res = CliRunner().invoke(app, ["inspect", str(paths[0]), "--format", "json"])
    assert res.exit_code == 0, res.output
    (c,) = json.loads(res.stdout)["checkpoints"]
    by = {t["name"]: t for t in c["tensors"]}
    assert by["netG.1.weight"]["eps"] == 1e-8 and by["netD.3.weight"]["eps"] == 1e-6  # the BatchNorm weights
    assert by["netG.1.weight"]["optimizer"]["key"] == "optimizerG" and c["name_mapping"] == "model-order"
    out = compare_checkpoints(*paths)
    assert not out["skipped"] and not out["warnings"]
    assert sorted(t["label"] for t in out["tensors"]) == sorted(by)
    # the CSV puts each tensor's decay ratios on its own row (was: by (group, index), netD's on netG's rows)
    res = CliRunner().invoke(app, ["inspect", *map(str, paths), "--format", "csv"])
    assert res.exit_code == 0, res.output
    rows = [r for r in csv.DictReader(io.StringIO(res.stdout)) if r["path"] == str(paths[1])]
    ratio = {t["label"]: t["ratio_q"]["p50"] for t in out["tensors"]}
    assert len(rows) == len(ratio) and all(float(r["decay_ratio_p50"]) == ratio[r["tensor"]] for r in rows)


def test_replay_refuses_a_file_with_two_adam_optimizers_in_one_line(gan, tmp_path):
    G, D, optG, optD = gan
    path = tmp_path / "checkpoint_5.pth"
    save_dcgan(path, G, D, optG, optD, epoch=5)
    with pytest.raises(InputError, match=r"holds 2 Adam optimizers \(optimizerG, optimizerD\)"):
        load_replay_checkpoint(path)
    res = CliRunner().invoke(app, ["replay", str(path), "--eps", "1e-3"])
    assert res.exit_code == 2
    line = next(x for x in res.output.splitlines() if "error" in x)
    assert "optimizerG, optimizerD" in line and "{'run': run}" in line and "'optimizer'" in line
    # one optimizer with its model replays as before: the refusal is about the two
    torch.save({"epoch": 5, "model": G.state_dict(), "optimizer": optG.state_dict()}, tmp_path / "g.pth")
    assert load_replay_checkpoint(tmp_path / "g.pth").step == 5


def test_replay_refuses_a_dcp_checkpoint_with_two_adam_optimizers(tmp_path):
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1))
    opts = {
        "optim_g": torch.optim.Adam(model[0].parameters(), **HYPER["G"]),
        "optim_d": torch.optim.AdamW(model[2].parameters()),
    }
    for _ in range(2):
        for o in opts.values():
            o.zero_grad()
        model(torch.randn(8, 16)).pow(2).mean().backward()
        for o in opts.values():
            o.step()
    sd = {"model": get_model_state_dict(model), **{k: get_optimizer_state_dict(model, o) for k, o in opts.items()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single process: no process group
        dcp.save(sd, checkpoint_id=str(tmp_path / "dcp"))
    # (was: both optimizers' group 0 merged into one, replayed with the first one's hyperparameters)
    with pytest.raises(InputError, match=r"holds 2 Adam optimizers \(optim_g, optim_d\)"):
        load_replay_checkpoint(tmp_path / "dcp")


@pytest.fixture(scope="module")
def accelerate_gan(tmp_path_factory):
    """accelerate's save_state of a GAN: model.safetensors + model_1.safetensors, optimizer.bin + optimizer_1.bin."""
    accelerate = pytest.importorskip("accelerate")
    torch.manual_seed(0)
    G, D = generator(), discriminator()
    optG, optD = torch.optim.Adam(G.parameters(), **HYPER["G"]), torch.optim.Adam(D.parameters(), **HYPER["D"])
    acc = accelerate.Accelerator(cpu=True)
    G, D, optG, optD = acc.prepare(G, D, optG, optD)
    crit, g = nn.BCEWithLogitsLoss(), torch.Generator().manual_seed(1)
    for _ in range(3):
        real, z = torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)
        fake = G(z)
        optD.zero_grad()
        acc.backward(crit(D(real), torch.ones(16, 1)) + crit(D(fake.detach()), torch.zeros(16, 1)))
        optD.step()
        optG.zero_grad()
        acc.backward(crit(D(fake), torch.ones(16, 1)))
        optG.step()
    out = tmp_path_factory.mktemp("acc") / "state"
    acc.save_state(str(out))
    return out, truth("model", G, optG.optimizer) | truth("model_1", D, optD.optimizer)


def test_accelerate_state_with_two_optimizers_reads_both(accelerate_gan):
    out, want = accelerate_gan
    assert (out / "optimizer_1.bin").is_file() and (out / "model_1.safetensors").is_file()
    ck = open_checkpoint(out)
    named = 0
    for t in ck.tensors():
        key = t.optimizer["key"]
        h = HYPER["G"] if key == "optimizer.bin" else HYPER["D"]
        assert (t.lr, t.beta2, t.eps) == (h["lr"], h["betas"][1], h["eps"]), t.label
        if t.name.startswith(f"{key}/group 0 / index "):
            continue  # safetensors keeps no parameter order: a shape shared by two parameters stays positional
        assert t.name.startswith("model." if key == "optimizer.bin" else "model_1."), t.name
        assert torch.equal(t.exp_avg_sq, want[t.name]["v"]) and torch.equal(t.param, want[t.name]["p"]), t.name
        named += 1
    assert named >= 6 and len(ck) == len(want)  # was: optimizer_1.bin (the discriminator's) not read at all
    # optimizer_1.bin given alone takes model_1.safetensors beside it (was: the first model's file)
    d_only = [t for t in open_checkpoint(out / "optimizer_1.bin").tensors() if t.name]
    assert d_only and all(torch.equal(t.param, want[f"model_1.{t.name}"]["p"]) for t in d_only)
    with pytest.raises(InputError, match=r"holds 2 Adam optimizers \(optimizer.bin, optimizer_1.bin\)"):
        load_replay_checkpoint(out)


@pytest.mark.parametrize(
    ("opt", "model", "score"),
    [
        (("optimizerG",), ("netG",), 2),
        (("opt_D",), ("D",), 2),
        (("g_optimizer",), ("generator",), 2),
        (("disc_opt",), ("discriminator",), 2),
        (("g_optim",), ("g_ema",), 1),
        (("optimizer_G",), ("G_A",), 1),
        (("optimizer_G",), ("D_A",), 0),
        (("optimizers", 1), ("models", 1), 2),
        (("optimizer",), ("model",), 0),  # no role words: shapes alone decide (and must be unique)
    ],
)
def test_key_affinity(opt, model, score):
    assert affinity(opt, model) == score, (role_words(opt), role_words(model))


def test_model_prefix_drops_state_dict_words():
    assert model_prefix(("G", "state_dict")) == "G" and model_prefix(("netG",)) == "netG"
    assert model_prefix(("model",)) == "model" and model_prefix(("models", 0)) == "models.0"


def test_scans_interval_ratios_pair_each_tensor_with_itself_across_optimizers(tmp_path):
    """evidence.checkpoint_interval_ratios (scan's AD105 / collapse spans) keyed tensors by (group, index),
    which both optimizers of a GAN file start at 0: netG's v was divided by netD's. Per element v_b ≥ β2^Δ·v_a,
    so every tensor's mean decay ratio is ≥ 1 when the pairs are right."""
    from adamdiag.analysis.evidence import checkpoint_interval_ratios
    from adamdiag.pipeline.summary import summarize_checkpoint

    summaries = []
    for steps in (4, 8):
        G, D, optG, optD = train_gan(steps)
        path = save_dcgan(tmp_path / f"checkpoint_{steps}.pth", G, D, optG, optD, epoch=steps)
        summaries.append(summarize_checkpoint(path, trust=False, convention=None))
    ratios = checkpoint_interval_ratios(summaries, 0.999)
    names = [t.name for t in summaries[1].tensors]
    assert sorted(r["tensor"] for r in ratios) == sorted(names) and len(set(names)) == len(names)
    assert all(r["decay_ratio"] >= 1 - 1e-6 for r in ratios), [(r["tensor"], r["decay_ratio"]) for r in ratios]


def test_replay_refuses_muon_beside_adamw_naming_both(tmp_path):
    """Muon for the matrices, AdamW for the rest (a common recipe): replay used to pick Muon and say the file
    held no Adam state; the AdamW half alone is not the run either — one line naming both, exit 2."""
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    muon = torch.optim.Muon([p for p in m.parameters() if p.ndim == 2], lr=0.02)
    adamw = torch.optim.AdamW([p for p in m.parameters() if p.ndim != 2], lr=1e-3)
    for _ in range(3):
        muon.zero_grad(), adamw.zero_grad()
        m(torch.randn(4, 8)).pow(2).mean().backward()
        muon.step(), adamw.step()
    path = tmp_path / "muon_adamw.pt"
    torch.save({"model": m.state_dict(), "optimizers": [muon.state_dict(), adamw.state_dict()], "step": 3}, path)
    res = CliRunner().invoke(app, ["replay", str(path)])
    assert res.exit_code == 2
    line = next(x for x in res.output.splitlines() if "error" in x)
    assert "holds 2 optimizers (optimizers.0 (momentum_buffer), optimizers.1 (AdamW))" in line
