"""A framework-neutral replay entry for a TF1 graph-mode run: ``sample_logs/tf1_vcollapse/``
(made by ``tools/runlab/tf1_multitask.py``). It imports TensorFlow; adamdiag itself never does.

    adamdiag replay sample_logs/tf1_vcollapse/model.ckpt-150 --entry examples/tf1_replay_entry.py:adamdiag_replay

adamdiag calls ``run(checkpoint, variant, steps)`` once per variant: rebuild the training graph with
the variant's AdamOptimizer, restore the Saver checkpoint (weights, both slots, beta powers,
global_step), run ``steps`` updates on the very batches of the run, and return per step the loss
(computed before the update, as logged), the mean g² of the gradient the update used, the mean
v̂_{t-1} before it (bias-corrected as TF1 does: v / (1 - β2^t)) and the median √v̂ after it. adamdiag
does the rest: fidelity against the log, outcomes, conclusion, exit code.

Bit-for-bit fidelity needs the run's kernels: the run was made with ``TF_ENABLE_ONEDNN_OPTS=0``
(Eigen), which importing ``tf1_multitask`` sets — unless TensorFlow was already imported in this
process with oneDNN on; then the replay drifts from the log within ~20 steps and adamdiag says so.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "runlab"))
import tf1_multitask as lab  # noqa: E402  (the model, data and batches of the run)


def run(checkpoint: str, variant: dict[str, Any], steps: int) -> dict[str, Any]:
    tf = lab.import_tf()
    g = tf.Graph()
    with g.as_default():
        x, y = lab.placeholders(tf)
        params, loss_vec, _, _ = lab.build_net(tf, x, y)
        gs = tf.compat.v1.train.get_or_create_global_step()
        opt = tf.compat.v1.train.AdamOptimizer(
            variant["lr"], beta1=lab.BETA1, beta2=variant["beta2"], epsilon=variant["eps"]
        )
        gv = opt.compute_gradients(loss_vec)
        train_op = opt.apply_gradients(gv, global_step=gs)  # the training graph's very update
        names = [v.op.name for _, v in gv]
        vslot = [opt.get_slot(v, "v") for _, v in gv]
        _, beta2_power = opt._get_beta_accumulators()  # β2^(t+1) before update t+1: TF1's bias correction
        correction = 1.0 - beta2_power / variant["beta2"]  # 1 - β2^t for v after t updates
        # what update t will use, read in a run of its own before it (the same batch, the same bits)
        before = {
            "loss": tf.reduce_sum(loss_vec),
            "g2": [tf.reduce_sum(tf.square(gr)) for gr, _ in gv],
            "vhat": [tf.reduce_sum(s) / correction for s in vslot],
        }
        saver = tf.compat.v1.train.Saver()
        with lab.session(tf) as sess:
            saver.restore(sess, checkpoint)
            start = int(sess.run(gs))
            # a β2 variant: its own β2^(t+1), as if the run had used it from the start
            if variant["beta2"] != lab.BETA2:  # keep the restored float32 power bit for bit otherwise
                sess.run(beta2_power.assign(variant["beta2"] ** (start + 1)))
            sizes = [int(np.prod(v.shape)) for _, v in gv]
            n = sum(sizes)
            out: dict[str, Any] = {"loss": [], "g2": {"global": []}, "vhat": {"global": []}}
            out["sqrt_vhat_median"] = {"global": []}
            for t in range(start + 1, start + steps + 1):
                feed = lab.batch_feed(x, y, t)
                b = sess.run(before, feed_dict=feed)
                sess.run(train_op, feed_dict=feed)
                out["loss"].append(float(b["loss"]))
                out["g2"]["global"].append(float(sum(b["g2"])) / n)
                out["vhat"]["global"].append(float(sum(b["vhat"])) / n)
                v_after, corr = sess.run([vslot, correction])
                vhat = np.concatenate([a.reshape(-1) for a in v_after]) / corr
                out["sqrt_vhat_median"]["global"].append(float(np.sqrt(np.median(vhat))))
                if not math.isfinite(out["loss"][-1]):
                    break
    assert names  # every trainable variable has a gradient
    return out


def adamdiag_replay(checkpoint: str) -> dict[str, Any]:
    """The entry: step and original eps/β2/lr come from the checkpoint itself (adamdiag's TF reader)."""
    return {"run": run}
