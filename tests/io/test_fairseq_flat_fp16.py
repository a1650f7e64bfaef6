"""fairseq's ``--fp16`` (FP16Optimizer, the default unless ``--fp16-no-flatten-grads`` or
``--memory-efficient-fp16``) steps one flat fp32 copy of every trainable parameter, laid end to end in
``model.parameters()`` order (``_FP16OptimizerMixin.build_fp32_params``); its ``last_optimizer_state`` then holds a
single state slot of that length. fairseq does not install on this Python: the loop below mirrors that code on a
small fp16 model with what trips a naive split — tied input/output embeddings (one parameter, two state-dict names)
and fairseq's float buffers ``version`` and ``_float_tensor`` in the state dict. inspect used to show one unnamed
tensor; it now cuts the flat state back into the model's parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adamdiag.io.checkpoints import open_checkpoint


class _Embedding(torch.nn.Module):
    """fairseq's SinusoidalPositionalEmbedding keeps a one-element float buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_float_tensor", torch.FloatTensor(1))


class _Decoder(torch.nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 8) -> None:
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(vocab, dim)
        self.embed_positions = _Embedding()
        self.fc = torch.nn.Linear(dim, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.output_projection = torch.nn.Linear(dim, vocab, bias=False)
        self.output_projection.weight = self.embed_tokens.weight  # share_decoder_input_output_embed
        self.register_buffer("version", torch.Tensor([3]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.tanh(self.fc(self.embed_tokens(tokens))))
        return self.output_projection(h)


def _fairseq_fp16_checkpoint(path: Path, updates: int = 6) -> dict[str, torch.Tensor]:
    """Train as FP16Optimizer does and save as fairseq's checkpoint_utils does; returns each parameter's slice
    of the flat exp_avg_sq (the truth)."""
    torch.manual_seed(0)
    model = _Decoder().half()
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() yields a tied one once
    total = sum(p.numel() for p in params)
    flat = torch.zeros(total)
    offset = 0
    for p in params:
        flat[offset : offset + p.numel()].copy_(p.data.view(-1))
        offset += p.numel()
    flat = torch.nn.Parameter(flat)
    opt = torch.optim.Adam([flat], lr=1e-2, eps=1e-8)
    for _ in range(updates):
        tokens = torch.randint(0, 11, (4, 5))
        for p in params:
            p.grad = None
        loss = torch.nn.functional.cross_entropy(model(tokens).float().view(-1, 11), tokens.view(-1))
        loss.backward()
        flat.grad = torch.cat([p.grad.float().view(-1) for p in params])
        opt.step()
        offset = 0
        with torch.no_grad():
            for p in params:
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
    state = {**opt.state_dict(), "loss_scale": 128.0}
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer_history": [{"optimizer_name": "FairseqAdam", "num_updates": updates}],
            "extra_state": {"epoch": 1},
            "last_optimizer_state": state,
        },
        path,
    )
    v = opt.state[flat]["exp_avg_sq"]
    names = [n for n, _ in model.named_parameters()]
    out, offset = {}, 0
    for n, p in zip(names, params):
        out[n] = v[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return out


def test_flat_state_is_cut_into_the_models_parameters(tmp_path: Path) -> None:
    f = tmp_path / "checkpoint_1_6.pt"
    truth = _fairseq_fp16_checkpoint(f)
    ck = open_checkpoint(f)
    assert ck.name_mapping == "model-order" and ck.step == 6
    assert any("one flat fp32 state" in w for w in ck.warnings)
    got = {t.name: t for t in ck.tensors()}
    # the tied embedding once (under its first name), no buffer
    assert set(got) == set(truth) and "decoder.version" not in got
    for name, v in truth.items():
        assert torch.equal(got[name].exp_avg_sq, v), name
        assert tuple(got[name].shape) == tuple(v.shape)


def test_sizes_that_do_not_add_up_stay_one_tensor(tmp_path: Path) -> None:
    """A flat state whose length is not the model's: nothing is guessed (one unnamed tensor, as before)."""
    f = tmp_path / "checkpoint_1_6.pt"
    _fairseq_fp16_checkpoint(f)
    ckpt = torch.load(f, weights_only=True)
    ckpt["model"]["extra.weight"] = torch.zeros(3, dtype=torch.half)  # a parameter the flat copy never had
    torch.save(ckpt, f)
    ck = open_checkpoint(f)
    assert ck.name_mapping != "model-order"
    assert len(list(ck.tensors())) == 1


def test_replay_refuses_a_flat_state(tmp_path: Path) -> None:
    """replay re-runs torch Adam on the model's parameters; a flat state is not theirs: one line, before any step."""
    from adamdiag.errors import InputError
    from adamdiag.replay.checkpoint import load_replay_checkpoint

    f = tmp_path / "checkpoint_1_6.pt"
    _fairseq_fp16_checkpoint(f)
    with pytest.raises(InputError, match="one flat optimizer state of 176 elements") as e:
        load_replay_checkpoint(f)
    assert "\n" not in str(e.value)
