"""DCP ``.metadata`` pickled by any Python: Debian 12's system Python 3.11.2 pickles enum members as
``builtins.getattr(EnumClass, "NAME")``; the safe reader accepts exactly that for DCP's metadata enums.

Two sources of that form: a real checkpoint saved by Debian's Python (committed fixture, made by
tools/runlab/make_dcp_debian_fixture.py), and one written here by the standard pickler with the reduce
that Python 3.11.0-3.11.4's ``Enum.__reduce_ex__`` returns (checked byte for byte against the real one).
"""

from __future__ import annotations

import collections
import enum
import io
import pathlib
import pickle
import pickletools
import shutil
from pathlib import Path

import make_checkpoints as mk
import pytest
import torch
from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING, Metadata

from adamdiag.errors import UntrustedCheckpointError
from adamdiag.io.checkpoints import open_checkpoint

FIXTURE = Path(__file__).parent.parent / "fixtures" / "dcp_debian311"


class _Debian311Pickler(pickle.Pickler):
    """The standard pickler with enum members reduced as CPython 3.11.2's ``Enum.__reduce_ex__`` does."""

    def reducer_override(self, obj):
        if isinstance(obj, enum.Enum):
            return getattr, (type(obj), obj.name)
        return NotImplemented


def _debian_form(obj, protocol: int = pickle.DEFAULT_PROTOCOL) -> bytes:
    buf = io.BytesIO()
    _Debian311Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def _globals(data: bytes) -> set[str]:
    """Module.name of every global a pickle imports (GLOBAL and STACK_GLOBAL), without loading it."""
    out, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            out.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            out.add(f"{strings[-2]}.{strings[-1]}")
    return out


def _compare(path: Path, truth: dict) -> None:
    ck = open_checkpoint(path)
    seen = 0
    for t in ck.tensors():
        ref = truth[t.name]
        assert torch.equal(t.exp_avg, ref["exp_avg"]) and torch.equal(t.exp_avg_sq, ref["exp_avg_sq"]), t.name
        seen += 1
    assert seen == len(truth) and ck.layout == "dcp"


def test_real_debian_python_checkpoint_is_read():
    md = (FIXTURE / "ckpt" / ".metadata").read_bytes()
    assert "builtins.getattr" in _globals(md)  # the form in question, as Debian's Python wrote it
    truth = torch.load(FIXTURE / "truth.pt", weights_only=True)
    assert truth["python"].startswith("3.11.2")
    _compare(FIXTURE / "ckpt", truth["state"])
    # The crafted form below is exactly what that Python writes: same object, same bytes.
    assert _debian_form(pickle.loads(md)) == md  # noqa: S301 - our own committed fixture


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_getattr_enum_form_written_here_is_read(tmp_path, protocol):
    path, truth = mk.write_dcp(tmp_path / "dcp", flatten=False)
    md = path / ".metadata"
    data = _debian_form(pickle.loads(md.read_bytes()), protocol)  # noqa: S301 - our own file
    assert {"builtins.getattr", "__builtin__.getattr"} & _globals(data)
    md.write_bytes(data)
    _compare(path, truth)


def _with_getattr_call(md_bytes: bytes, target: object, name: str) -> bytes:
    """The metadata with one extra attribute whose value is ``getattr(target, name)`` in the pickle."""

    class Evil:
        def __reduce__(self):
            return getattr, (target, name)

    obj = pickle.loads(md_bytes)  # noqa: S301 - our own file
    obj.storage_meta.__dict__["x"] = Evil()
    return _debian_form(obj)


@pytest.mark.parametrize(
    "target,name",
    # Targets the allow-list itself admits (a getattr on them could reach methods), and one it does not.
    [
        (Metadata, "__init__"),
        (pathlib.Path, "unlink"),
        (collections.OrderedDict, "fromkeys"),
        (shutil.rmtree, "__call__"),
    ],
)
def test_getattr_on_anything_else_is_refused(tmp_path, target, name):
    path, _ = mk.write_dcp(tmp_path / "dcp")
    md = path / ".metadata"
    md.write_bytes(_with_getattr_call(md.read_bytes(), target, name))
    with pytest.raises(UntrustedCheckpointError, match=r"builtins\.getattr|Unsupported global") as e:
        open_checkpoint(path)
    assert "--trust-checkpoint" in str(e.value) and "\n" not in str(e.value)


def test_getattr_on_a_dcp_enum_attribute_that_is_no_member_is_refused(tmp_path):
    path, _ = mk.write_dcp(tmp_path / "dcp")
    md = path / ".metadata"
    md.write_bytes(_with_getattr_call(md.read_bytes(), _MEM_FORMAT_ENCODING, "__class__"))
    with pytest.raises(UntrustedCheckpointError, match=r"builtins\.getattr \(on _MEM_FORMAT_ENCODING\.__class__\)"):
        open_checkpoint(path)
