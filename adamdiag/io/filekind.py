"""What a file given to the wrong command is, from its first bytes (no unpickling, no full read), so that
``scan model.pt`` and ``inspect events.out.tfevents…`` say which command takes the file instead of
calling it damaged.

Recognised: torch's zip format (a zip holding ``<name>/data.pkl``), torch's legacy format (a pickle of
torch's magic number first), safetensors (u64 header length, then a JSON object) and a TFRecord-framed
file (TensorBoard's event files: u64 length + its masked CRC32C).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

# What reading a damaged zip can raise besides BadZipFile: OSError, ValueError (a damaged member name),
# KeyError (a member the directory names but cannot be found), EOFError, NotImplementedError (a damaged
# compression-method field: "That compression method is not supported"), zlib.error (a damaged deflate stream).
ZIP_DAMAGE: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    OSError,
    ValueError,
    KeyError,
    EOFError,
    NotImplementedError,
    zlib.error,
)

# torch.save's legacy (non-zip) format starts with the pickle of its magic number 0x1950a86a20f9469cfc6c:
# LONG1 of 10 bytes, then the number little-endian (io.checkpoints reads the protocol around it) ...
TORCH_MAGIC_LONG1 = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# ... after PROTO 2, as torch.save writes it by default.
_TORCH_LEGACY_HEAD = b"\x80\x02" + TORCH_MAGIC_LONG1


def sniff(path: Path) -> str | None:
    """``"torch"``, ``"safetensors"``, ``"events"`` or None (another kind, or unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = f.seek(0, 2)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except ZIP_DAMAGE:
            return None
        return "torch" if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names) else None
    if head.startswith(_TORCH_LEGACY_HEAD):
        return "torch"
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    from adamdiag.io import tfrecord

    return "events" if tfrecord.starts_like_tfrecord(head) else None


def not_an_event_file(path: Path) -> str | None:
    """For a file given to scan/check/plot/export that is a checkpoint: the one-line error, else None."""
    kind = sniff(path)
    if kind == "torch":
        return (
            f"{path} is a torch checkpoint, not an event file: scan takes run folders or event files "
            f"(pass the checkpoint with --checkpoints), and `adamdiag inspect {path}` reads it"
        )
    if kind == "safetensors":
        return f"{path} is a safetensors file (model weights), not an event file: scan takes run folders or event files"
    return None


def not_a_checkpoint(path: Path) -> str | None:
    """For a file given as a checkpoint that is of another kind: the one-line error, else None."""
    kind = sniff(path)
    if kind == "events":
        return f"{path} is a TensorBoard event file, not a checkpoint: `adamdiag scan {path}` reads it"
    if kind == "safetensors":
        return (
            f"{path} is a safetensors file: model weights, no optimizer state; pass the checkpoint folder "
            f"({path.parent}) or its optimizer file"
        )
    return None
