"""Hand-written NumPy reference for an MLP training step, used by ``fastgrad demo`` and bench/.

Written the way one writes it by hand: BLAS matmuls, in-place SGD updates, nothing clever.
"""

import numpy as np


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
