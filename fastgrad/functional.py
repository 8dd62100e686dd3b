"""Losses and activations as functions (also available as ``fg.nn.functional``).

Compositions of op-table primitives, except where a fused primitive is numerically necessary
(cross-entropy over integer labels, BCE with logits: both log-sum-exp stable).
"""

from __future__ import annotations

import numpy as np

from .errors import fail
from .opcodes import Op
from .ops import fmt
from .tensor import apply, as_tensor


def _reduce(loss, reduction, name):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise fail(name, f"unknown reduction {reduction!r}", "use 'mean', 'sum' or 'none'")


def mse_loss(pred, target, reduction="mean"):
    """Mean squared error, mean((pred - target)^2), as torch.nn.functional.mse_loss.

    pred and target must have the same shape (no silent broadcasting, a common bug).

    >>> import fastgrad as fg
    >>> fg.mse_loss(fg.tensor([1.0, 2.0]), fg.tensor([0.0, 0.0])).item()
    2.5
    """
    pred, target = as_tensor(pred), as_tensor(target)
    if pred.shape != target.shape:
        raise fail("mse_loss", f"pred {fmt(pred.shape)} and target {fmt(target.shape)} differ",
                   "reshape the target to the prediction's shape (e.g. y.reshape(-1, 1))")
    diff = pred - target
    return _reduce(diff * diff, reduction, "mse_loss")


def cross_entropy(logits, labels, reduction="mean"):
    """Softmax cross-entropy of logits (N, C) against integer class labels (N,).

    Stable at any logit scale (log-sum-exp). As torch.nn.functional.cross_entropy.

    >>> import fastgrad as fg, numpy as np
    >>> round(fg.cross_entropy(fg.tensor([[0.0, 0.0]]), np.array([1])).item(), 6)
    0.693147
    """
    return _reduce(apply(Op.CROSS_ENTROPY, logits, labels), reduction, "cross_entropy")


def binary_cross_entropy_with_logits(logits, targets, reduction="mean"):
    """Sigmoid + binary cross-entropy in one stable op: softplus(x) - x*z, elementwise.

    Targets broadcast against logits as in NumPy.

    >>> import fastgrad as fg
    >>> round(fg.binary_cross_entropy_with_logits(fg.tensor([0.0]), fg.tensor([1.0])).item(), 6)
    0.693147
    """
    return _reduce(apply(Op.BCE_LOGITS, logits, targets), reduction,
                   "binary_cross_entropy_with_logits")


def linear(x, weight, bias=None):
    """y = x @ weight.T + bias, weight (out, in): x (..., in) -> (..., out), no transpose copy."""
    x = as_tensor(x)
    if x.ndim == 1:
        return linear(x.reshape(1, -1), weight, bias).reshape(-1)
    y = apply(Op.MATMUL, x, weight, trans_b=True)
    return y if bias is None else y + bias


def relu(x):
    return as_tensor(x).relu()


def sigmoid(x):
    return as_tensor(x).sigmoid()


def tanh(x):
    return as_tensor(x).tanh()


def leaky_relu(x, negative_slope=0.01):
    return as_tensor(x).leaky_relu(negative_slope)


def softplus(x):
    return as_tensor(x).softplus()


def softmax(x, axis=-1):
    return as_tensor(x).softmax(axis)


def log_softmax(x, axis=-1):
    return as_tensor(x).log_softmax(axis)


def identity(x):
    return as_tensor(x)


ACTIVATIONS = {"relu": relu, "tanh": tanh, "sigmoid": sigmoid, "leaky_relu": leaky_relu,
               "softplus": softplus, "identity": identity, "linear": identity}

__all__ = ["linear", "mse_loss", "cross_entropy", "binary_cross_entropy_with_logits", *ACTIVATIONS,
           "softmax", "log_softmax", "np"]
