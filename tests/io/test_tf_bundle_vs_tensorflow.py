"""adamdiag's hand-written bundle reader against TensorFlow's own, tensor for tensor, bit for bit.

Needs TensorFlow (skipped without it; adamdiag's environment does not have it). Run it where it is:

    PYTHONPATH=. /tmp/tfvenv/bin/python -m pytest -q --noconftest tests/io/test_tf_bundle_vs_tensorflow.py

(the generator's environment plus ``pip install pytest google-crc32c``; only numpy, google_crc32c
and tensorboard's protos are needed on adamdiag's side).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "tf"
PREFIXES = sorted(str(p)[: -len(".index")] for p in FIX.rglob("*.index"))


@pytest.mark.parametrize("prefix", PREFIXES, ids=lambda p: str(Path(p).relative_to(FIX)))
def test_every_tensor_equals_tensorflows(prefix):
    from adamdiag.io.checkpoints.tf import OBJECT_GRAPH, Bundle

    b = Bundle(Path(prefix))
    r = tf.train.load_checkpoint(prefix)
    shapes = r.get_variable_to_shape_map()
    assert set(b.entries) == set(shapes)
    for name, e in b.entries.items():
        assert list(e.shape) == list(shapes[name]), name
        if name == OBJECT_GRAPH:
            assert b.read_string(name) == r.get_tensor(name)
            continue
        ours, theirs = b.read(name), np.asarray(r.get_tensor(name))
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs, equal_nan=True), name
