"""``torch.distributed.checkpoint`` saved with ``HuggingFaceStorageWriter``: safetensors shards
(``model-0000i-of-0000n.safetensors``, with DCP's ``DCP_SHARDING_INFO`` in the header metadata when
the tensors are sharded) and ``model.safetensors.index.json`` instead of ``.metadata`` + ``*.distcp``.

safetensors holds tensors only, so only a flattened optimizer state of tensors can be in it
(``state.<fqn>.exp_avg``, ``state.<fqn>.exp_avg_sq``, ``state.<fqn>.step``, optionally under a
prefix such as ``optim.``); the param groups' lr/betas/eps/weight decay are plain numbers that this
writer cannot store. They are therefore unknown — NaN with ``<name>_source = "unknown"`` (never a
silent default) — unless a param-group value was saved as a tensor (``param_groups.<fqn>.<name>``).
Nothing here unpickles: safetensors headers are JSON.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from adamdiag.errors import InputError
from adamdiag.io.checkpoints import OptimizerCheckpoint, _as_float, _as_int, _Entry, open_regular

_STATE_RE = re.compile(r"^(?P<prefix>(?:.*\.)?)state\.(?P<fqn>.+)\.(?P<key>exp_avg_sq|exp_avg|max_exp_avg_sq|step)$")
_GROUP_RE = re.compile(r"^(?P<prefix>(?:.*\.)?)param_groups\.(?P<fqn>.+)\.(?P<key>lr|betas|eps|weight_decay)$")
SHARDING_KEY = "DCP_SHARDING_INFO"


def _files(d: Path) -> list[Path]:
    try:
        return sorted(d / n for n in os.listdir(d) if n.endswith(".safetensors"))
    except OSError:
        return []


def _header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes, ``__metadata__``)."""
    try:
        with open_regular(path, what="safetensors file") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000:
                raise InputError(f"{path}: not a safetensors file (header length {n})")
            return json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable safetensors header ({e})") from None


def is_hf_dcp_dir(d: Path) -> bool:
    """Safetensors shards that hold an Adam optimizer state (``…state.<fqn>.exp_avg_sq``)."""
    files = _files(d)
    if not files:
        return False
    index = d / "model.safetensors.index.json"
    try:
        if index.is_file():
            keys = list(json.loads(index.read_text()).get("weight_map", {}))
        else:
            keys = [k for f in files for k in _header(f) if k != "__metadata__"]
    except (OSError, ValueError, InputError):
        return False
    return any(_STATE_RE.match(k) and k.endswith(".exp_avg_sq") for k in keys)


class _Chunks:
    """Every stored piece of every key: (file, offsets in the full tensor, shape)."""

    def __init__(self, d: Path) -> None:
        self.d = d
        self.pieces: dict[str, list[tuple[Path, tuple[int, ...], tuple[int, ...]]]] = {}
        self.handles: dict[Path, Any] = {}
        for f in _files(d):
            head = _header(f)
            meta = head.get("__metadata__") or {}
            try:
                sharding = json.loads(meta[SHARDING_KEY]) if SHARDING_KEY in meta else {}
            except ValueError:
                raise InputError(f"{f}: unreadable {SHARDING_KEY} metadata") from None
            for k, v in head.items():
                if k == "__metadata__":
                    continue
                shape = tuple(int(s) for s in v["shape"])
                off = tuple(int(o) for o in (sharding.get(k) or {}).get("saved_offsets") or [0] * len(shape))
                self.pieces.setdefault(k, []).append((f, off, shape))

    def shape(self, key: str) -> tuple[int, ...]:
        ps = self.pieces[key]
        return tuple(max(o[i] + s[i] for _, o, s in ps) for i in range(len(ps[0][2])))

    def read(self, key: str) -> Any:
        import torch
        from safetensors import safe_open

        def get(f: Path) -> Any:
            if f not in self.handles:
                self.handles[f] = safe_open(str(f), framework="pt", device="cpu")
            return self.handles[f].get_tensor(key)

        ps = self.pieces[key]
        full = self.shape(key)
        if len(ps) == 1 and ps[0][2] == full:
            return get(ps[0][0])
        first = get(ps[0][0])
        out = torch.empty(full, dtype=first.dtype)
        covered = 0
        for f, off, shape in ps:
            part = first if f == ps[0][0] else get(f)
            out[tuple(slice(o, o + s) for o, s in zip(off, shape))] = part
            covered += math.prod(shape)
        if covered < math.prod(full):
            raise InputError(f"{self.d}: the shards hold {covered} of the {math.prod(full)} elements of {key}")
        return out


def open_hf_dcp(d: Path) -> OptimizerCheckpoint:
    """Open a HuggingFaceStorageWriter checkpoint directory. Raises InputError."""
    chunks = _Chunks(d)
    state: dict[tuple[str, str], dict[str, str]] = {}  # (prefix, fqn) -> {key: stored name}
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for k in chunks.pieces:
        m = _STATE_RE.match(k)
        if m:
            state.setdefault((m["prefix"], m["fqn"]), {})[m["key"]] = k
            continue
        m = _GROUP_RE.match(k)
        if m:
            groups.setdefault((m["prefix"], m["fqn"]), {})[m["key"]] = k
    adam = {pf: st for pf, st in state.items() if "exp_avg" in st and "exp_avg_sq" in st}
    if not adam:
        raise InputError(f"{d}: safetensors shards without an Adam optimizer state (no state.<name>.exp_avg_sq)")
    prefixes = sorted({p for p, _ in adam})
    warnings: list[str] = []
    if len(prefixes) > 1:
        warnings.append(f"{len(prefixes)} optimizer states ({', '.join(p or '<top>' for p in prefixes)}); all are read")
    entries: list[_Entry] = []
    unknown: set[str] = set()
    for (prefix, fqn), st in adam.items():
        g = groups.get((prefix, fqn), {})
        vals = {k: chunks.read(key) for k, key in g.items()}
        betas = vals["betas"].tolist() if "betas" in vals else [None, None]
        raw = {
            "lr": vals.get("lr"),
            "beta1": betas[0],
            "beta2": betas[1],
            "eps": vals.get("eps"),
            "weight_decay": vals.get("weight_decay"),
        }
        sources = {k: ("file" if v is not None else "unknown") for k, v in raw.items()}
        unknown |= {k for k, v in sources.items() if v == "unknown"}
        hyper: dict[str, Any] = {k: _as_float(v) for k, v in raw.items()}
        hyper.update(amsgrad="max_exp_avg_sq" in st, sources=sources)
        info = {"index": prefixes.index(prefix), "key": prefix.rstrip("."), "type": "unknown-adam"}
        entries.append(
            _Entry(
                group=0,
                index=fqn,
                pos=len(entries),
                name=fqn,
                shape=chunks.shape(st["exp_avg"]),
                hyper=hyper,
                optimizer=info,
            )
        )
    if unknown:
        warnings.append(
            f"HuggingFaceStorageWriter checkpoint: {', '.join(sorted(unknown))} not stored (safetensors holds "
            "tensors only): unknown, and the statistics that need them are left out"
        )

    def fetch_state(e: _Entry) -> dict[str, Any]:
        st = adam[(prefixes[(e.optimizer or {}).get("index", 0)], str(e.index))]
        return {k: chunks.read(key) for k, key in st.items()}

    params: dict[str, str] = {}
    for k in chunks.pieces:
        if not _STATE_RE.match(k) and not _GROUP_RE.match(k):
            params[k] = k
            head, _, rest = k.partition(".")
            if head in ("model", "module") and rest:  # {"model": msd, "optim": osd} flattens to model.<fqn>
                params.setdefault(rest, k)

    def fetch_param(name: str) -> Any:
        return chunks.read(params[name]) if name in params else None

    read_steps = [_as_int(chunks.read(st["step"])) for st in adam.values() if "step" in st]
    steps = [s for s in read_steps if s is not None]
    ck = OptimizerCheckpoint(
        path=str(d),
        step=max(steps) if steps else None,
        layout="dcp-hf",
        optimizer="unknown-adam",
        convention="torch",
        name_mapping="fqn",
        warnings=warnings,
        entries=entries,
    )
    ck._fetch_state = fetch_state
    ck._fetch_param = fetch_param
    return ck


__all__ = ["is_hf_dcp_dir", "open_hf_dcp"]
