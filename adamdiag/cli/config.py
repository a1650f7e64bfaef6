"""The one config rule: options from the nearest ``adamdiag.toml`` or ``pyproject.toml`` with a
``[tool.adamdiag]`` table, looked for from the current directory upward (as ruff and pytest do).

Sections ``[scan]``, ``[check]`` and ``[replay]`` hold options by their long name (``fail-on =
"warning"`` or ``fail_on``; ``verify``, whatever the Python parameter behind ``--verify`` is called); ``[check]`` starts from ``[scan]`` (check is scan as a gate), and
``plot``/``report`` take the ``[scan]`` options they have. Precedence: command line > config >
built-in default — the config only changes defaults (click's ``default_map``), so anything typed
on the command line wins. The replay entry point is not taken from here: it is looked for upward
from the checkpoint first (:func:`adamdiag.replay.protocol.find_config_entry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adamdiag.errors import InputError

SECTIONS = ("scan", "check", "replay")
# Never from a file: running code from a checkpoint must be asked for on the command line each time.
COMMAND_LINE_ONLY = frozenset({"trust_checkpoint", "trust_entry"})
# Commands that take the [scan] options they also have.
INHERIT = {"check": "scan", "plot": "scan", "report": "scan"}


def find_config(cwd: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """(file, its adamdiag table) of the nearest config file above ``cwd``, or None.

    In one directory ``adamdiag.toml`` wins over ``pyproject.toml``; a ``pyproject.toml`` without
    ``[tool.adamdiag]`` is passed over (it configures other tools)."""
    from adamdiag.replay.protocol import _read_toml

    d = (cwd or Path.cwd()).resolve()
    while True:
        own = d / "adamdiag.toml"
        if own.is_file():
            return own, _read_toml(own)
        py = d / "pyproject.toml"
        if py.is_file():
            table = _read_toml(py).get("tool", {}).get("adamdiag")
            if isinstance(table, dict):
                return py, table
        if d.parent == d:
            return None
        d = d.parent


def long_name(param: Any) -> str:
    """The option's long name without dashes (``verify`` for ``--verify``, whose parameter is ``verify_``):
    what a config file names it by."""
    longs = [o for o in param.opts if o.startswith("--")]
    return longs[0][2:] if longs else (param.name or "").replace("_", "-")


def default_map(
    path: Path,
    table: dict[str, Any],
    params: dict[str, dict[str, Any]],
    origins: dict[tuple[str, str], str] | None = None,
) -> dict[str, dict[str, Any]]:
    """click ``default_map`` from a config table; ``params`` maps command -> parameter name -> its option
    (a click ``Parameter``: typer's own copy of click or click's).

    Keys are the options' long names (``fail-on``, or ``fail_on``). Raises :class:`InputError` for an
    unknown section or option, so a typo is not silently ignored. ``origins``, when given, gets
    (command, parameter name) -> where in the file its value was set (``[scan] format``), for naming a value
    the option refuses (click reports it later, as if typed on the command line).
    """
    out: dict[str, dict[str, Any]] = {}
    for section, values in table.items():
        if section not in SECTIONS:
            raise InputError(f"{path}: unknown section [{section}] (use {', '.join(f'[{s}]' for s in SECTIONS)})")
        if not isinstance(values, dict):
            raise InputError(f"{path}: [{section}] must be a table of options")
        by_long = {long_name(p): p for p in params.get(section, {}).values()}
        opts = {}
        for key, value in values.items():
            param = by_long.get(key.replace("_", "-"))
            if section == "replay" and key == "entry":
                continue  # looked for upward from the checkpoint by replay itself
            if param is not None and param.name in COMMAND_LINE_ONLY:
                raise InputError(f"{path}: '{key}' is accepted on the command line only (it runs code from files)")
            if param is None or param.name is None:
                known = ", ".join(sorted(n for n, p in by_long.items() if p.name not in COMMAND_LINE_ONLY))
                raise InputError(f"{path}: unknown option '{key}' in [{section}] (options: {known})")
            opts[param.name] = value
            if origins is not None:
                origins[(section, param.name)] = f"[{section}] {key}"
        out[section] = opts
    for cmd, base in INHERIT.items():
        inherited = {k: v for k, v in out.get(base, {}).items() if k in params.get(cmd, {})}
        if origins is not None:
            origins.update({(cmd, k): origins[(base, k)] for k in inherited if k not in out.get(cmd, {})})
        if inherited or cmd in out:
            out[cmd] = {**inherited, **out.get(cmd, {})}
    return out
