"""Family 6, fused losses: softmax cross-entropy per row, logits (N, C) and integer labels (N,).

Kernels: kernels/reduce.py (``cross_entropy_forward`` / ``cross_entropy_vjp``).
"""

from __future__ import annotations

import numpy as np

from .base import Layout, OpDef, fail, fmt, no_attrs

__all__ = ["CROSS_ENTROPY", "FAMILY", "LAYOUT", "cross_entropy_rule"]

FAMILY = 6
LAYOUT = Layout(ints=("rows", "classes"), shown=("rows", "classes"))


def cross_entropy_rule(name, shapes):
    """logits (N, C), labels (N,) -> the per-row loss (N,)."""
    logits, labels = shapes
    if len(logits) != 2 or labels != logits[:1]:
        raise fail(
            name,
            f"expects logits (N, C) and integer labels (N,), got {fmt(logits)} and {fmt(labels)}",
            "reshape logits to (N, C) and pass one class index per row",
        )
    if logits[1] == 0:
        raise fail(name, "logits have zero classes", "give at least one class")
    return (logits[0],), *LAYOUT.encode(rows=logits[0], classes=logits[1])


def _softmax_rows(x):
    p = np.exp(x - x.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _cross_entropy(xs, a, out_shape):
    x = xs[0]
    m = x.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
    return lse - x[np.arange(x.shape[0]), xs[1]]


def _cross_entropy_vjp(xs, y, g, a):
    x, labels = xs
    p = _softmax_rows(x)
    p[np.arange(x.shape[0]), labels] -= 1
    return [p * g[:, None], None]


def _cross_entropy_jvp(xs, ts, y, a):
    x, labels = xs
    t = ts[0]
    return (_softmax_rows(x)[None] * t).sum(axis=2) - t[:, np.arange(x.shape[0]), labels]


CROSS_ENTROPY = OpDef(
    "cross_entropy", 600, 2, cross_entropy_rule, LAYOUT,
    forward=_cross_entropy, vjp=_cross_entropy_vjp, jvp=_cross_entropy_jvp, recover=no_attrs,
    int_inputs=(1,), int_bound=lambda shapes: (0, shapes[0][1]),
    samples=[([(4, 3), (4,)], {}, "real"), ([(1, 5), (1,)], {}, "real")],
    front_end="fg.cross_entropy(x, labels)", kernel="reduce")
