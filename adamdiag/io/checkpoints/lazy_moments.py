"""A parameter's optimizer state whose moments are stored quantized (bitsandbytes' 8-bit codes, torchao's
8-bit / 4-bit / fp8 codes) and dequantized only when read, so that a large checkpoint holds one tensor's
float32 copy at a time. The readers of those formats (:mod:`.bnb`, :mod:`.torchao_lowbit`) subclass it; the
rest of the checkpoint reader sees a torch-Adam-shaped state (``exp_avg``, ``exp_avg_sq``, ``step``).
"""

from __future__ import annotations

from typing import Any

# elements dequantized at a time: chunk sizes are a multiple of every block size these formats use, so the
# integer indices of one chunk, never 8 bytes per element of the whole tensor, are alive at once
CHUNK = 1 << 22

MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class LazyMoments(dict):  # type: ignore[type-arg]
    """One parameter's state: the plain entries (``step``...) as items, the moments computed by
    :meth:`_moment` when read; ``shape`` (the parameter's) without reading any of them."""

    def __init__(self, plain: dict[str, Any], shape: tuple[int, ...], moments: tuple[str, ...]) -> None:
        super().__init__(plain)
        self.shape = shape
        self._moments = moments

    def _moment(self, key: str) -> Any:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __contains__(self, key: object) -> bool:
        return key in self._moments or super().__contains__(key)

    def __getitem__(self, key: Any) -> Any:
        if key in self._moments:
            return self._moment(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default
