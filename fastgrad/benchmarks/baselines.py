"""Honest hand-written baselines for an MLP training step (forward + backward + SGD update).

``numpy_step``: plain NumPy, the way one writes it by hand: BLAS matmuls, in-place SGD
updates, nothing clever (``fastgrad demo`` times it too).
``NumbaStep``: one fused @njit function over a flat parameter buffer, BLAS for the matmuls,
fused activation/gradient loops and the SGD update; compiled once, cached.
Both compute exactly the same function as the fastgrad workloads in ``workloads.py``.

This module imports Numba directly on purpose: it is what a user would write by hand without
fastgrad, not part of the engine (which reaches Numba only through ``fastgrad.kernels``).
"""

import numba
import numpy as np

__all__ = ["NumbaStep", "numpy_step"]

def numpy_step(params, x, y, act, loss, lr):
    """params: [W0 (out,in), b0, W1, b1, ...] updated in place; returns the loss."""
    n = len(params) // 2
    hs = [x]
    h = x
    for i in range(n):
        W, b = params[2 * i], params[2 * i + 1]
        z = h @ W.T + b
        if i < n - 1:
            if act == "relu":
                h = np.maximum(z, 0)
            elif act == "tanh":
                h = np.tanh(z)
            else:
                h = 1 / (1 + np.exp(-z))
        else:
            h = z
        hs.append(h)
    out = hs[-1]
    B = x.shape[0]
    if loss == "mse":
        d = out - y
        value = float((d * d).mean())
        g = (2.0 / d.size) * d
    else:
        m = out.max(axis=1, keepdims=True)
        e = np.exp(out - m)
        s = e.sum(axis=1, keepdims=True)
        value = float((np.log(s[:, 0]) + m[:, 0] - out[np.arange(B), y]).mean())
        g = e / s
        g[np.arange(B), y] -= 1
        g /= B
    for i in range(n - 1, -1, -1):
        W, b = params[2 * i], params[2 * i + 1]
        h_in = hs[i]
        gW = g.T @ h_in
        gb = g.sum(axis=0)
        if i > 0:
            g = g @ W
            a = hs[i]
            if act == "relu":
                g *= a > 0
            elif act == "tanh":
                g *= 1 - a * a
            else:
                g *= a * (1 - a)
        W -= lr * gW
        b -= lr * gb
    return value


ACT = {"relu": 0, "tanh": 1, "sigmoid": 2}
LOSS = {"mse": 0, "ce": 1}


@numba.njit(cache=True, error_model="numpy")
def _numba_step(flat, sizes, x, yf, yi, act, loss, lr, acts, grads):
    """flat holds W0,b0,W1,b1,... ; sizes = [in, h1, ..., out]; acts/grads are scratch."""
    n = sizes.size - 1
    B = x.shape[0]
    # forward: acts holds each layer's output (B, size) back to back
    off_p = 0
    off_a = 0
    h = x
    for i in range(n):
        fi, fo = sizes[i], sizes[i + 1]
        W = flat[off_p : off_p + fo * fi].reshape((fo, fi))
        b = flat[off_p + fo * fi : off_p + fo * fi + fo]
        z = acts[off_a : off_a + B * fo].reshape((B, fo))
        np.dot(h, W.T, z)
        for r in range(B):
            for j in range(fo):
                v = z[r, j] + b[j]
                if i < n - 1:
                    if act == 0:
                        v = v if v > 0 else 0.0
                    elif act == 1:
                        v = np.tanh(v)
                    else:
                        v = 1.0 / (1.0 + np.exp(-v))
                z[r, j] = v
        h = z
        off_p += fo * fi + fo
        off_a += B * fo
    out = h
    fo = sizes[n]
    g = np.empty((B, fo), flat.dtype)
    value = 0.0
    if loss == 0:
        for r in range(B):
            for j in range(fo):
                d = out[r, j] - yf[r, j]
                value += d * d
                g[r, j] = 2.0 * d / (B * fo)
        value /= B * fo
    else:
        for r in range(B):
            m = out[r, 0]
            for j in range(1, fo):
                m = max(m, out[r, j])
            s = 0.0
            for j in range(fo):
                s += np.exp(out[r, j] - m)
            value += np.log(s) + m - out[r, yi[r]]
            for j in range(fo):
                g[r, j] = np.exp(out[r, j] - m) / s / B
            g[r, yi[r]] -= 1.0 / B
        value /= B
    # backward + SGD update, last layer first
    for i in range(n - 1, -1, -1):
        fi, fo = sizes[i], sizes[i + 1]
        off_a -= B * fo
        off_p -= fo * fi + fo
        if i > 0:
            h_in = acts[off_a - B * fi : off_a].reshape((B, fi))
        else:
            h_in = x
        W = flat[off_p : off_p + fo * fi].reshape((fo, fi))
        b = flat[off_p + fo * fi : off_p + fo * fi + fo]
        gW = np.dot(g.T, h_in)
        g_prev = np.dot(g, W) if i > 0 else g
        for j in range(fo):
            s = 0.0
            for r in range(B):
                s += g[r, j]
            b[j] -= lr * s
        Wf = W.ravel()
        gWf = gW.ravel()
        for k in range(Wf.size):
            Wf[k] -= lr * gWf[k]
        if i > 0:
            for r in range(B):
                for j in range(fi):
                    a = h_in[r, j]
                    if act == 0:
                        g_prev[r, j] *= 1.0 if a > 0 else 0.0
                    elif act == 1:
                        g_prev[r, j] *= 1.0 - a * a
                    else:
                        g_prev[r, j] *= a * (1.0 - a)
            g = g_prev
    return value


class NumbaStep:
    """A fused Numba training step over a flat copy of the parameters."""

    def __init__(self, params, sizes, batch, act, loss, lr, dtype):
        self.flat = np.concatenate([p.ravel() for p in params]).astype(dtype)
        self.sizes = np.array(sizes, np.int64)
        self.acts = np.zeros(batch * sum(sizes[1:]), dtype)
        self.grads = np.zeros(1, dtype)
        self.act, self.loss, self.lr = ACT[act], LOSS[loss], lr
        self.empty_f = np.zeros((0, 0), dtype)
        self.empty_i = np.zeros(0, np.int64)

    def __call__(self, x, y):
        yf = y if y.dtype.kind == "f" else self.empty_f
        yi = y if y.dtype.kind != "f" else self.empty_i
        return _numba_step(
            self.flat, self.sizes, x, yf, yi, self.act, self.loss, self.lr, self.acts, self.grads
        )
