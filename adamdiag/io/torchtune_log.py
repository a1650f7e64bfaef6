"""torchtune's ``DiskLogger`` files (``<output_dir>/logs/log_<unix time>.txt``: the metric logger torchtune's recipe
configs name by default) as a log, with the run's ``torchtune_config.yaml`` as its writer arguments.

Each line is one ``log_dict`` call of a recipe, once per optimizer step (``log_every_n_steps``)::

    Step 12 | loss:0.5432 lr:2e-05 tokens_per_second_per_gpu:1234.5 grad_norm:0.97

``Step`` is the recipe's ``global_step``, counted after the optimizer step (1-based: the loss at step t is that of the
batches update t used, summed over the gradient-accumulation micro-batches and divided by their tokens);
``grad_norm`` (when ``clip_grad_norm`` is set) is what ``clip_grad_norm_`` returned, the norm before clipping. A
resumed run writes a new file in the same folder: the folder is one run, its files in the order of their names'
timestamps. ``DiskLogger.log_config`` saves the recipe's config as ``torchtune_config.yaml`` in ``output_dir`` (the
folder above ``logs/``): its ``optimizer`` (β2, eps) and ``clip_grad_norm`` are read (:func:`config_arguments`).

>>> parse_line("Step 3 | loss:0.5 lr:1e-05 grad_norm:tensor(0.25, device='cuda:0') ")
(3, [('loss', 0.5), ('lr', 1e-05), ('grad_norm', 0.25)])
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adamdiag.io.events import FileData

# DiskLogger's default file name: log_{int(time.time())}.txt
LOG_NAME = re.compile(r"log_\d+\.txt$")
CONFIG_NAME = "torchtune_config.yaml"  # save_config: {output_dir}/torchtune_config.yaml
MAX_BYTES = 1 << 31
_LINE = re.compile(r"Step (\d+) \| (.*)$")
# one "name:value " pair; a tensor is written as its repr when it is not 0-dim (tensor(0.25, device='cuda:0'))
_PAIR = re.compile(r"(\S+?):(tensor\([^)]*\)|\S+)")
_TENSOR = re.compile(r"tensor\(\s*([^,)\s]+)")


def is_log_name(name: str) -> bool:
    """Whether a file is named as DiskLogger names its file by default."""
    return bool(LOG_NAME.match(name))


def _number(text: str) -> float | None:
    m = _TENSOR.match(text)
    try:
        return float(m.group(1) if m else text)
    except ValueError:
        return None


def parse_line(line: str) -> tuple[int, list[tuple[str, float]]] | None:
    """(step, [(name, value)]) of one DiskLogger line; None for a line that is not one. A value that is no number
    is left out (its name too)."""
    m = _LINE.match(line.strip())
    if m is None:
        return None
    pairs = []
    for name, raw in _PAIR.findall(m.group(2)):
        v = _number(raw)
        if v is not None:
            pairs.append((name, v))
    return int(m.group(1)), pairs


def is_disk_log(path: Path) -> bool:
    """Whether ``path`` is a torchtune DiskLogger file: a ``.txt`` whose first line is a ``Step N | ...`` line (only
    that line is read; never a FIFO)."""
    from adamdiag.io.framework_logs import first_line

    first = first_line(path) if path.suffix == ".txt" else None
    return first is not None and parse_line(first) is not None


def log_files(folder: Path) -> list[Path]:
    """A logs folder's DiskLogger files in the order they were started (their names' timestamps)."""
    try:
        found = [p for p in folder.iterdir() if is_log_name(p.name) and is_disk_log(p)]
    except OSError:
        return []
    return sorted(found, key=lambda p: (int(p.stem.split("_", 1)[1]), p.name))


def _add_line(line: str, rows: Any) -> bool:
    got = parse_line(line)
    if got is None:
        return False
    step, pairs = got
    for name, value in pairs:
        rows.add(name, step, value)
    return True


def read_disk_log(path: Path | str) -> FileData:
    """One DiskLogger file as event-file columns; the config beside it (:func:`config_arguments`) as its writer
    arguments. A line that is no ``Step N | ...`` line is skipped with a warning, a last line still being written
    left out (:func:`adamdiag.io.framework_logs.read_line_log`)."""
    from adamdiag.io.events import ARGS_SOURCE, TORCHTUNE_VERSION
    from adamdiag.io.framework_logs import read_line_log

    path = Path(path)
    log = read_line_log(path, MAX_BYTES, "torchtune DiskLogger file", _add_line, "'Step N | ...' line")
    rows, size, mtime, records, warnings = log.rows, log.size, log.mtime, log.records, log.warnings
    config, where = config_arguments(path.parent)
    return rows.file_data(
        path,
        size,
        mtime,
        version=TORCHTUNE_VERSION,
        kind="torchtune",
        records=records,
        warnings=warnings,
        note=(
            "read from torchtune's DiskLogger files (log_<time>.txt: each value at the recipe's global step, counted "
            "after the optimizer step); no TensorBoard event files in this run"
        ),
        arguments={**config, ARGS_SOURCE: where} if config else None,
    )


def config_arguments(log_dir: Path) -> tuple[dict[str, Any], str]:
    """The recipe config ``DiskLogger.log_config`` saved, flattened one level (``optimizer.eps``,
    ``optimizer.betas``, ``clip_grad_norm``), and where it was read; ({}, "") when there is none. Looked for in the
    logs folder's parent (``log_dir: ${output_dir}/logs``, the recipes' default), then in the folder itself."""
    from adamdiag.io.framework_logs import file_head

    for folder in (log_dir.parent, log_dir):
        path = folder / CONFIG_NAME
        raw = file_head(path, MAX_BYTES)  # never a FIFO; read whole
        if raw is not None:
            return parse_config(raw.decode("utf-8", errors="replace")), str(path)
    return {}, ""


def parse_config(text: str) -> dict[str, Any]:
    """The top-level scalars of an OmegaConf-saved YAML and those one level down, as ``parent.key`` (block lists of
    scalars as lists); anything deeper or in flow style is left out. No YAML library: the file is what
    ``OmegaConf.save`` writes, two-space indents.

    >>> parse_config("optimizer:\\n  _component_: torch.optim.AdamW\\n  betas:\\n  - 0.9\\n  - 0.95\\n  eps: 1.0e-08\\nclip_grad_norm: null\\n")
    {'optimizer._component_': 'torch.optim.AdamW', 'optimizer.betas': [0.9, 0.95], 'optimizer.eps': 1e-08, 'clip_grad_norm': None}
    """
    from adamdiag.io.mlflow_log import typed

    out: dict[str, Any] = {}
    parent = ""
    listing: str | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if listing is not None and body.startswith("- ") and indent in (0, 2, 4):
            out.setdefault(listing, []).append(_scalar(body[2:], typed))
            continue
        listing = None
        m = re.match(r"([A-Za-z_][\w.\-]*):(?:\s+(\S.*))?$", body)
        if m is None:
            continue
        key, value = m.group(1), m.group(2)
        if indent == 0:
            parent = key if value is None else ""
            if value is None:
                listing = key  # a list or a mapping follows
            else:
                out[key] = _scalar(value, typed)
            continue
        if indent == 2 and parent:
            full = f"{parent}.{key}"
            if value is None:
                listing = full
            else:
                out[full] = _scalar(value, typed)
    return out


def _scalar(text: str, typed: Any) -> Any:
    text = text.split(" #", 1)[0].strip()
    if text in ("null", "~"):
        return None
    if text in ("true", "false"):
        return text == "true"
    return typed(text.strip("'\""))
