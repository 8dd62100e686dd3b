"""``saturation``: how an activation's saturated units shrink the gradient, layer by layer
(``local_gradient``, ``layer_gradient_stats``)."""

from __future__ import annotations

import time

import numpy as np

from ..core.errors import fail
from ..data.digits import load_digits
from ..frontend import functional as F
from ..frontend.tensor import as_tensor
from ..frontend.creation import zeros
from ..ops.unary import stable_sigmoid
from ..training import nn
from .results import StudyResult, as_list, pyplot_figure, save_figure

__all__ = ["SaturationResult", "layer_gradient_stats", "local_gradient", "probed_forward",
           "saturation"]


_MAX_LOCAL = {"sigmoid": 0.25, "tanh": 1.0, "relu": 1.0, "leaky_relu": 1.0, "softplus": 1.0,
              "identity": 1.0, "linear": 1.0}


def local_gradient(activation, y, z=None):
    """d act / d z from the activation's output y (and its input z where y does not tell).

    >>> local_gradient("sigmoid", np.array([0.5, 0.9])).round(3)
    array([0.25, 0.09])
    """
    y = np.asarray(y, np.float64)
    if activation == "sigmoid":
        return y * (1 - y)
    if activation == "tanh":
        return 1 - y * y
    if activation == "relu":
        return (y > 0).astype(np.float64)
    if activation in ("identity", "linear"):
        return np.ones_like(y)
    if z is None:
        raise fail("local_gradient", f"{activation} needs its input z", "pass z")

    z = np.asarray(z, np.float64)
    if activation == "softplus":
        return stable_sigmoid(z)
    if activation == "leaky_relu":
        return np.where(z > 0, 1.0, 0.01)
    raise fail("local_gradient", f"unknown activation {activation!r}",
               f"use one of {sorted(_MAX_LOCAL)}")


def probed_forward(model, X, probes=True):
    """An MLP's forward with a zero probe added to every hidden layer's output, so that after
    backward ``probe.grad`` = dL/dh_l. Returns (output, [(z_l, h_l, probe_l)])."""

    act = F.ACTIVATIONS[model.activation]
    x = as_tensor(X)
    layers = list(model.layers)
    hidden = []
    for i, layer in enumerate(layers):
        z = layer(x)
        if i == len(layers) - 1:
            return z, hidden
        h = act(z)
        e = None
        if probes:
            e = zeros(*h.shape, dtype=h.dtype, requires_grad=True)
            h = h + e
        hidden.append((z, h, e))
        x = h
    return x, hidden


def layer_gradient_stats(model, X, y, saturated_below=0.1):
    """Per hidden layer of an ``fg.nn.MLP``: mean local gradient of its activation, fraction of
    saturated units (local gradient < ``saturated_below`` x its maximum: 0.25 for sigmoid, 1
    for tanh), ||dL/dh_l|| reaching the layer's output and ||dL/dW_l||, for the cross-entropy
    loss on (X (N, in), y (N,) integer labels) or the MSE on float targets y (N, out).

    Returns a list of rows, layer 1 first (layer = index of the hidden layer).

    >>> import fastgrad as fg
    >>> m = fg.nn.MLP([3, 4, 2], activation="sigmoid", init="normal", std=0.0)
    >>> row = layer_gradient_stats(m, np.zeros((5, 3)), np.array([0, 1, 0, 1, 0]))[0]
    >>> row["mean_local_grad"], row["fraction_saturated"]
    (0.25, 0.0)
    """

    for p in model.parameters():
        p.grad = None
    out, hidden = probed_forward(model, X)
    y = np.asarray(y)
    loss = F.cross_entropy(out, y) if y.dtype.kind in "iu" else F.mse_loss(out, as_tensor(y))
    loss.backward()
    top = _MAX_LOCAL.get(model.activation, 1.0)
    rows = []
    for i, ((z, h, e), layer) in enumerate(zip(hidden, list(model.layers))):
        lg = local_gradient(model.activation, h.numpy(), z.numpy())
        w = layer.weight.grad
        rows.append({
            "layer": i + 1, "mean_local_grad": float(lg.mean()),
            "fraction_saturated": float(np.mean(lg < saturated_below * top)),
            "grad_norm_h": float(np.linalg.norm(e.grad)),
            "grad_norm_W": float(np.linalg.norm(w)) if w is not None else 0.0,
        })
    return rows


class SaturationResult(StudyResult):
    """One row per (activation, hidden layer) of a deep MLP at initialisation."""

    name = "saturation"

    def plot(self, path):
        """Per layer: mean local gradient (0.25 line for sigmoid), and gradient norm reaching it."""
        fig, (a1, a2, a3) = pyplot_figure(ncols=3, width=4.0, height=3.6)
        for act in dict.fromkeys(r["activation"] for r in self.rows):
            rs = [r for r in self.rows if r["activation"] == act]
            layers = [r["layer"] for r in rs]
            a1.plot(layers, [r["mean_local_grad"] for r in rs], "o-", label=act)
            a2.plot(layers, [r["fraction_saturated"] for r in rs], "o-", label=act)
            a3.plot(layers, [r["grad_norm_h"] for r in rs], "o-", label=act)
        a1.axhline(0.25, color="gray", ls=":", lw=0.8, label="0.25 (sigmoid's maximum)")
        a1.set_ylabel("mean local gradient act'(z)")
        a2.set_ylabel("fraction saturated")
        a3.set_ylabel("||dL/dh_l|| reaching layer l")
        a3.set_yscale("log")
        for a in (a1, a2, a3):
            a.set_xlabel("hidden layer (1 = nearest the input)")
            a.legend(fontsize=7)
        return save_figure(fig, path)


def saturation(depth=10, width=64, activations=("sigmoid", "tanh"), init="default", n=256,
               weight_scale=1.0, seed=0):
    """Vanishing gradients with depth: deep MLPs (``depth`` hidden layers of ``width``) on ``n``
    digit images (fastgrad.data.digits.load_digits), one per activation, at initialisation.

    For each hidden layer: the mean local gradient (never above 0.25 for a sigmoid), the
    fraction of saturated units, and the gradient norm reaching the layer, which shrinks
    layer after layer towards the input (Bengio et al. 1994; Glorot & Bengio 2010).
    init: any ``fg.nn.MLP`` init ("default", "xavier_normal", "normal", ...); weight_scale
    multiplies every weight after it (e.g. 4: pre-activations grow and units saturate).

    >>> r = saturation(depth=3, width=8, n=16)
    >>> [(row["activation"], row["layer"]) for row in r.rows][:3]
    [('sigmoid', 1), ('sigmoid', 2), ('sigmoid', 3)]
    >>> max(row["mean_local_grad"] for row in r.rows if row["activation"] == "sigmoid") <= 0.25
    True
    """

    t0 = time.perf_counter()
    X, y, _, _ = load_digits(seed=seed, dtype=np.float64)
    X, y = X[:n], y[:n]
    rows = []
    for act in as_list(activations) if not isinstance(activations, str) else [activations]:
        model = nn.MLP([X.shape[1]] + [width] * depth + [10], activation=act, init=init,
                       seed=seed)
        for layer in model.layers:
            layer.weight.numpy()[...] *= weight_scale
        for r in layer_gradient_stats(model, X, y):
            rows.append({"activation": act, **r})
    params = {"depth": depth, "width": width, "init": init, "n": n,
              "weight_scale": weight_scale, "seed": seed}
    return SaturationResult(rows, params, time.perf_counter() - t0)
