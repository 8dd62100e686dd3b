"""Layers and activations as functions, and the losses (losses.py), as ``fg.nn.functional``.

Activations are op-table primitives, each with PyTorch's forward and backward formulas.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import fail
from ..ops import Op, int_tuple
from .conv import avg_pool2d, conv1d, conv2d, max_pool2d
from .losses import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy,
                     huber_loss, kl_div, l1_loss, mse_loss, nll_loss, one_hot, smooth_l1_loss)
from .modes import is_replayed
from .inputs import make_rng
from .tensor import apply, as_tensor, take, where


def linear(x, weight, bias=None):
    """y = x @ weight.T + bias, weight (out, in): x (..., in) -> (..., out), no transpose copy.

    With a bias of shape (out,) this is one LINEAR row (product and bias add fused).

    >>> import fastgrad as fg, numpy as np
    >>> y = fg.nn.functional.linear(np.ones((2, 3)), fg.tensor(np.ones((4, 3))), fg.tensor(np.arange(4.0)))
    >>> y.shape, y.numpy()[0]
    ((2, 4), array([3., 4., 5., 6.]))
    """
    x = as_tensor(x)
    if bias is not None and as_tensor(bias).ndim == 1:
        return apply(Op.LINEAR, x, weight, bias)
    if x.ndim == 1:
        return linear(x.reshape(1, -1), weight, bias).reshape(-1)
    y = apply(Op.MATMUL, x, weight, trans_b=True)
    return y if bias is None else y + bias


def linear_act(x, weight, c, activation):
    """act(x @ weight.T + c) in one LINEAR_ACT row: the product, the add and the activation
    fused, forward and backward. weight (out, in); x (..., in); c a bias (out,) or an addend of
    the output's shape (..., out); activation "tanh", "sigmoid" or "relu". An MLP layer or an
    Elman RNN cell (fg.nn.RNN: act(h W_hh^T + x_t W_ih^T + b)) without the intermediate rows.

    >>> import fastgrad as fg, numpy as np
    >>> y = fg.nn.functional.linear_act(np.ones((2, 3)), fg.tensor(np.ones((4, 3))),
    ...                                 fg.tensor(-np.arange(4.0)), "relu")
    >>> y.numpy()[0]
    array([3., 2., 1., 0.])
    """
    return apply(Op.LINEAR_ACT, as_tensor(x), weight, c, activation=activation)


def relu(x):
    """max(x, 0) elementwise; the result has the shape of ``x``. Same as ``x.relu()``.

    >>> import fastgrad as fg
    >>> fg.relu(fg.tensor([-1.0, 0.0, 2.0])).numpy()
    array([0., 0., 2.])
    """
    return as_tensor(x).relu()


def sigmoid(x):
    """1 / (1 + exp(-x)) elementwise; the result has the shape of ``x``. Same as ``x.sigmoid()``.

    >>> import fastgrad as fg
    >>> fg.sigmoid(fg.tensor([-1.0, 0.0, 1.0])).numpy().round(4)
    array([0.2689, 0.5   , 0.7311])
    """
    return as_tensor(x).sigmoid()


def tanh(x):
    """Hyperbolic tangent elementwise; the result has the shape of ``x``. Same as ``x.tanh()``.

    >>> import fastgrad as fg
    >>> fg.tanh(fg.tensor([0.0, 1.0])).numpy().round(4)
    array([0.    , 0.7616])
    """
    return as_tensor(x).tanh()


def leaky_relu(x, negative_slope=0.01):
    """x where x > 0, else ``negative_slope`` * x, elementwise; the result has the shape of ``x``.

    >>> import fastgrad as fg
    >>> fg.leaky_relu(fg.tensor([-2.0, 3.0]), negative_slope=0.1).numpy()
    array([-0.2,  3. ])
    """
    return as_tensor(x).leaky_relu(negative_slope)


def softplus(x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta x)) / beta elementwise, computed stably, and x itself where
    beta x > threshold, as PyTorch's; the result has the shape of ``x``.

    >>> import fastgrad as fg
    >>> fg.softplus(fg.tensor([0.0, 1.0])).numpy().round(4)
    array([0.6931, 1.3133])
    """
    return as_tensor(x).softplus(beta, threshold)


def embedding(indices, weight, padding_idx=None):
    """Rows ``weight[indices]``: integer indices (...) and a weight (n, d) give (..., d), as
    torch.nn.functional.embedding; the row ``padding_idx`` gets no gradient."""
    weight = as_tensor(weight)
    if padding_idx is not None:  # that row read through a copy no gradient flows into
        pad = np.zeros((weight.shape[0], 1), bool)
        pad[padding_idx] = True
        weight = where(pad, weight.detach(), weight)
    return take(weight, indices, axis=0)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) over the last ``len(normalized_shape)`` dims (the biased
    variance), times ``weight`` plus ``bias``, as torch.nn.functional.layer_norm."""
    x = as_tensor(x)
    shape = int_tuple("layer_norm", "normalized_shape", normalized_shape, minimum=1)
    if x.shape[x.ndim - len(shape):] != shape:
        raise fail("layer_norm", f"normalized_shape {shape} is not the end of the input's "
                   f"shape {x.shape}", "pass the sizes of the input's last dims")
    dims = tuple(range(x.ndim - len(shape), x.ndim))
    centred = x - x.mean(dims, keepdim=True)
    y = centred * ((centred * centred).mean(dims, keepdim=True) + eps).rsqrt()
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


def dropout(x, p=0.5, training=True, rng=None):
    """Elements zeroed with probability ``p``, the rest scaled by 1 / (1 - p), when
    ``training`` (as torch.nn.functional.dropout); the mask is drawn from ``rng`` (a
    np.random.Generator or seed). Eager only: inside fg.compile a mask would be drawn once."""
    x = as_tensor(x)
    if not training or p == 0:
        return x
    if is_replayed():
        raise fail("dropout", "inside fg.compile (or fg.scan) a mask would be drawn once and "
                   "reused at every call (or step)", "call model.eval() before compiling, or "
                   "train this model eagerly")
    if p == 1:
        return x * 0.0
    keep = make_rng("dropout", rng).random(x.shape) >= p
    return x * (keep / (1.0 - p)).astype(x.dtype if x.dtype.kind == "f" else np.float64)


def gelu(x, approximate="none"):
    """x Phi(x) (Phi the standard normal CDF), or with ``approximate="tanh"`` PyTorch's tanh
    approximation, as torch.nn.functional.gelu.

    >>> import fastgrad as fg
    >>> fg.gelu(fg.tensor([0.0, 1.0])).numpy().round(4)
    array([0.    , 0.8413])
    """
    if not isinstance(approximate, str) or approximate not in ("none", "tanh"):
        raise fail("gelu", f"approximate={approximate!r}", 'pass "none" or "tanh"')
    return apply(Op.GELU, x, c0=float(approximate == "tanh"))


def silu(x):
    """x * sigmoid(x) (swish), as torch.nn.functional.silu."""
    return apply(Op.SILU, x)


def elu(x, alpha=1.0):
    """x where x > 0, else alpha (exp(x) - 1), as torch.nn.functional.elu."""
    return apply(Op.ELU, x, c0=alpha)


def selu(x):
    """scale * elu(x, alpha) with the self-normalising constants, as torch's selu."""
    return apply(Op.SELU, x)


def mish(x):
    """x * tanh(softplus(x)), as torch.nn.functional.mish."""
    return apply(Op.MISH, x)


def hardswish(x):
    """x * relu6(x + 3) / 6, as torch.nn.functional.hardswish."""
    return apply(Op.HARDSWISH, x)


def relu6(x):
    """min(max(x, 0), 6); the gradient passes where 0 < x < 6, as torch's relu6."""
    return apply(Op.RELU6, x)


def logsigmoid(x):
    """log(sigmoid(x)) = -softplus(-x), computed stably, as torch.nn.functional.logsigmoid."""
    return apply(Op.LOGSIGMOID, x)


def softmax(x, dim=-1, *, axis=None):
    """exp(x) / sum(exp(x)) along ``dim`` (NumPy's ``axis=`` too), stably; same shape as ``x``, each slice sums to 1.

    For logits (N, C) the default ``axis=-1`` gives one distribution over C classes per row.

    >>> import fastgrad as fg, numpy as np
    >>> fg.softmax(fg.tensor([[0.0, 0.0], [0.0, np.log(3.0)]])).numpy()
    array([[0.5 , 0.5 ],
           [0.25, 0.75]])
    """
    return as_tensor(x).softmax(dim, axis=axis)


def log_softmax(x, dim=-1, *, axis=None):
    """x - logsumexp(x) along ``dim`` (NumPy's ``axis=`` too): log(softmax(x)) without overflow; same shape as ``x``.

    >>> import fastgrad as fg
    >>> fg.log_softmax(fg.tensor([0.0, 0.0])).numpy().round(6)
    array([-0.693147, -0.693147])
    """
    return as_tensor(x).log_softmax(dim, axis=axis)


def identity(x):
    return as_tensor(x)


ACTIVATIONS = {"relu": relu, "tanh": tanh, "sigmoid": sigmoid, "leaky_relu": leaky_relu,
               "softplus": softplus, "identity": identity, "linear": identity, "gelu": gelu,
               "silu": silu, "elu": elu, "selu": selu, "mish": mish, "hardswish": hardswish,
               "relu6": relu6, "logsigmoid": logsigmoid}

__all__ = ["ACTIVATIONS", "avg_pool2d", "binary_cross_entropy", "binary_cross_entropy_with_logits",
           "conv1d", "conv2d", "cross_entropy", "dropout", "max_pool2d", "elu", "embedding", "gelu", "layer_norm", "hardswish", "huber_loss", "identity", "kl_div",
           "l1_loss", "leaky_relu", "linear", "linear_act", "log_softmax", "logsigmoid", "mish",
           "mse_loss", "nll_loss", "one_hot", "relu", "relu6", "selu", "sigmoid", "silu",
           "smooth_l1_loss", "softmax", "softplus", "tanh"]
