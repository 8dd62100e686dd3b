"""Fused optimizer updates and gradient clipping over the flat parameter/gradient buffers.

Each rule is PyTorch's documented torch.optim algorithm (default options: no maximize, no
foreach). ``hyper`` holds the options as float64, ``t`` is the 1-based step count, and s1..s3
are per-parameter state buffers laid out like the parameters:

    SGD      hyper = [lr, momentum, dampening, nesterov, weight_decay]      s1 = momentum buffer
    ADAGRAD  hyper = [lr, lr_decay, weight_decay, eps]                      s1 = sum of squares
    RMSPROP  hyper = [lr, alpha, eps, weight_decay, momentum, centered]     s1 = square avg,
                                                                            s2 = momentum, s3 = grad avg
    ADAM     hyper = [lr, beta1, beta2, eps, weight_decay, amsgrad, decoupled]
                                                                            s1 = m, s2 = v, s3 = max v
    (AdamW is ADAM with decoupled = 1.)
"""

import numpy as np

from ._jit import jit, jit_entry, jit_inline

__all__ = ["ADAGRAD", "ADAM", "RMSPROP", "SGD", "clip_gradients", "folds_sgd", "optimizer_update",
           "sgd_plain"]

SGD, ADAGRAD, RMSPROP, ADAM = 0, 1, 2, 3


@jit
def sgd_plain(p, g, lr):
    """p -= lr g, with lr rounded to p's dtype: SGD without momentum or weight decay, as
    optimizer_update runs it (and the VJPs that fold it in as p += -lr g, kernels/views.py
    ``add_scaled``: the same bits)."""
    lr_p = p.dtype.type(lr)
    for i in range(p.size):
        p[i] -= lr_p * g[i]


@jit_inline
def folds_sgd(kind, hyper, max_norm, max_value, check):
    """Whether a training step may fold the update into the VJPs (INTO_VALUE, kernels/views.py):
    plain SGD (no momentum, no weight decay), no clipping (it needs every gradient first) and
    no anomaly check (it checks each gradient a row writes)."""
    return (kind == SGD and hyper[1] == 0.0 and hyper[4] == 0.0 and max_norm <= 0.0
            and max_value <= 0.0 and not check)


@jit_entry
def optimizer_update(kind, p, g, s1, s2, s3, hyper, t):
    lr = hyper[0]
    n = p.size
    if kind == SGD:
        mom, damp, nesterov, wd = hyper[1], hyper[2], hyper[3], hyper[4]
        if mom == 0.0 and wd == 0.0:
            # Plain SGD (torch.optim.SGD's defaults): a loop without branches vectorises (100k
            # float32: 30 -> 22 us), and with lr in the parameters' dtype, as PyTorch's
            # p.add_(g, alpha=-lr) takes it, float32 runs 8 lanes wide with no conversions
            # (19 -> 12 us).
            sgd_plain(p, g, lr)
            return
        for i in range(n):
            d = g[i] + wd * p[i]
            if mom != 0.0:
                if t > 1:
                    s1[i] = mom * s1[i] + (1.0 - damp) * d
                else:
                    s1[i] = d
                d = d + mom * s1[i] if nesterov != 0.0 else s1[i]
            p[i] -= lr * d
    elif kind == ADAGRAD:
        decay, wd, eps = hyper[1], hyper[2], hyper[3]
        clr = lr / (1.0 + (t - 1) * decay)
        for i in range(n):
            d = g[i] + wd * p[i]
            s1[i] += d * d
            p[i] -= clr * d / (np.sqrt(s1[i]) + eps)
    elif kind == RMSPROP:
        alpha, eps, wd, mom, centered = hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
        for i in range(n):
            d = g[i] + wd * p[i]
            s1[i] = alpha * s1[i] + (1.0 - alpha) * d * d
            if centered != 0.0:
                s3[i] = alpha * s3[i] + (1.0 - alpha) * d
                avg = np.sqrt(s1[i] - s3[i] * s3[i]) + eps
            else:
                avg = np.sqrt(s1[i]) + eps
            if mom > 0.0:
                s2[i] = mom * s2[i] + d / avg
                p[i] -= lr * s2[i]
            else:
                p[i] -= lr * d / avg
    elif kind == ADAM:
        b1, b2, eps, wd, amsgrad, decoupled = hyper[1], hyper[2], hyper[3], hyper[4], hyper[5], hyper[6]
        bc1 = 1.0 - b1**t
        bc2_sqrt = np.sqrt(1.0 - b2**t)
        step = lr / bc1
        for i in range(n):
            if decoupled != 0.0:
                p[i] *= 1.0 - lr * wd
                d = g[i]
            else:
                d = g[i] + wd * p[i]
            s1[i] = b1 * s1[i] + (1.0 - b1) * d
            s2[i] = b2 * s2[i] + (1.0 - b2) * d * d
            if amsgrad != 0.0:  # the running max keeps a NaN, as torch.maximum (max() drops it)
                s3[i] = s2[i] if (s2[i] > s3[i] or s2[i] != s2[i]) else s3[i]
                denom = np.sqrt(s3[i]) / bc2_sqrt + eps
            else:
                denom = np.sqrt(s2[i]) / bc2_sqrt + eps
            p[i] -= step * s1[i] / denom


@jit
def clip_gradients(g, max_norm, max_value):
    """Clip by value (if max_value > 0), then by total 2-norm as torch.nn.utils.clip_grad_norm_
    (scale by max_norm / (norm + 1e-6) when that is below 1; if max_norm > 0). Returns the norm
    measured before norm-clipping. A NaN norm scales every gradient by NaN, as PyTorch's
    clamped coefficient does: no parameter takes an unclipped step."""
    if max_value > 0.0:
        for i in range(g.size):
            g[i] = min(max(g[i], -max_value), max_value)
    s = 0.0
    for i in range(g.size):
        s += g[i] * g[i]
    norm = np.sqrt(s)
    if max_norm > 0.0:
        coef = max_norm / (norm + 1e-6)
        if not coef >= 1.0:  # below 1, or NaN
            for i in range(g.size):
                g[i] *= coef
    return norm
