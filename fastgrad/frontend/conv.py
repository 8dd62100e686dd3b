"""Convolution and pooling over images (N, C, H, W) and sequences (N, C, L), as
torch.nn.functional's, composed from the registry's rows: every output position's window is
gathered with one index array computed from the shapes when recorded (im2col: a constant,
so it compiles and replays like any tape), then one matrix product per group (convolution),
or a max or mean over the window (pooling). Gradients are those of the gather (added back at
each window's places) and of the product.

Padding reads a sentinel appended to each flattened image: 0 for convolution and average
pooling, -inf for max pooling (as PyTorch's implicit padding).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..core.errors import fail
from ..ops import Op, fmt
from .inputs import guard_new
from .tensor import apply, as_tensor, concatenate, take
from .creation import full

__all__ = ["avg_pool2d", "conv1d", "conv2d", "max_pool2d", "window_index"]


def _pair(name, what, value, minimum):
    """An int or a pair of ints (each >= minimum) as a pair."""
    items = (value, value) if isinstance(value, (int, np.integer)) and not isinstance(
        value, bool) else value
    if not isinstance(items, (tuple, list)) or len(items) != 2 or any(
            isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or
            not minimum <= v < 2**31 for v in items):
        raise fail(name, f"{what} must be an int >= {minimum} or a pair of them, got {value!r}",
                   f"pass e.g. {what}=1")
    return int(items[0]), int(items[1])


def _padding(name, padding, kernel, dilation, stride):
    """Padding as ((top, bottom), (left, right)): an int, a pair, "valid" or "same"."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise fail(name, 'padding="same" with a stride other than 1',
                           "pass stride=1 or an explicit padding")
            total = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return tuple((t // 2, t - t // 2) for t in total)
        raise fail(name, f"padding={padding!r}", 'pass an int, a pair, "valid" or "same"')
    ph, pw = _pair(name, "padding", padding, 0)
    return (ph, ph), (pw, pw)


@functools.lru_cache(maxsize=64)
def window_index(channels, height, width, kernel, stride, padding, dilation):
    """For an image (channels, height, width) flattened, with one sentinel element appended at
    index channels * height * width: the index array (OH * OW, channels * kh * kw) of every
    output position's window (the sentinel where the window leaves the image), and (OH, OW).

    >>> idx, (oh, ow) = window_index(1, 3, 3, (2, 2), (1, 1), ((0, 0), (0, 0)), (1, 1))
    >>> oh, ow, idx[0].tolist()
    (2, 2, [0, 1, 3, 4])
    """
    (kh, kw), (sh, sw), ((pt, _), (pl, _)), (dh, dw) = kernel, stride, padding, dilation
    oh, ow = _out_size(height, width, kernel, stride, padding, dilation)
    rows = (np.arange(oh) * sh - pt)[:, None] + np.arange(kh)[None, :] * dh  # (OH, kh)
    cols = (np.arange(ow) * sw - pl)[:, None] + np.arange(kw)[None, :] * dw  # (OW, kw)
    r = rows[:, None, None, :, None]  # (OH, 1, 1, kh, 1)
    c = cols[None, :, None, None, :]  # (1, OW, 1, 1, kw)
    ch = np.arange(channels)[None, None, :, None, None]
    inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    flat = (ch * height + r) * width + c
    idx = np.where(inside, flat, channels * height * width)
    idx = idx.reshape(max(oh, 0) * max(ow, 0), channels * kh * kw).astype(np.int64)
    idx.flags.writeable = False  # cached per shape (an eager model calls it every step)
    return idx, (oh, ow)


def _out_size(height, width, kernel, stride, padding, dilation):
    (kh, kw), (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = kernel, stride, padding, dilation
    return ((height + pt + pb - dh * (kh - 1) - 1) // sh + 1,
            (width + pl + pr - dw * (kw - 1) - 1) // sw + 1)


def _windows(name, x, kernel, stride, padding, dilation, sentinel):
    """x (N, C, H, W) -> its windows (N, OH * OW, C * kh * kw) and (OH, OW)."""
    n, c, h, w = x.shape
    oh, ow = _out_size(h, w, kernel, stride, padding, dilation)
    if oh > 0 and ow > 0:  # the index, and the windows it gathers
        cells = oh * ow * c * kernel[0] * kernel[1]
        guard_new(name, cells * (8 + n * x.dtype.itemsize), (n, oh * ow, c * kernel[0] *
                                                             kernel[1]))
    idx, (oh, ow) = window_index(c, h, w, kernel, stride, padding, dilation)
    if oh <= 0 or ow <= 0:
        raise fail(name, f"a {kernel[0]}x{kernel[1]} window (dilation {dilation}) does not fit "
                   f"the input {fmt(x.shape)} with padding {padding}",
                   "pass a smaller kernel or more padding")
    flat = x.reshape(n, c * h * w)
    pad = full((n, 1), sentinel, dtype=x.dtype if x._tape is None else x.tape.dtype)
    return take(concatenate([flat, pad], dim=1), idx, axis=1), (oh, ow)


def _image(name, x, ndim):
    x = as_tensor(x)
    if x.ndim != ndim:
        raise fail(name, f"input of shape {fmt(x.shape)}", f"pass a batch of {ndim}-d inputs "
                   "(N, C, H, W)" if ndim == 4 else "(N, C, L)")
    return x


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """x (N, C, H, W), weight (O, C / groups, kh, kw), bias (O,) -> (N, O, OH, OW), as
    torch.nn.functional.conv2d (a cross-correlation; stride, padding (int, pair, "valid",
    "same"), dilation, groups).

    >>> import fastgrad as fg, numpy as np
    >>> y = fg.nn.functional.conv2d(np.ones((1, 1, 4, 4)), fg.tensor(np.ones((2, 1, 3, 3))))
    >>> y.shape, float(y.numpy()[0, 0, 0, 0])
    ((1, 2, 2, 2), 9.0)
    """
    x, weight = _image("conv2d", x, 4), as_tensor(weight)
    if weight.ndim != 4:
        raise fail("conv2d", f"weight of shape {fmt(weight.shape)}",
                   "pass (out_channels, in_channels / groups, kh, kw)")
    groups = _pair("conv2d", "groups", groups, 1)[0]
    o, cg, kh, kw = weight.shape
    n, c = x.shape[:2]
    if c % groups or o % groups or cg * groups != c:
        raise fail("conv2d", f"input channels {c}, weight {fmt(weight.shape)}, groups {groups}",
                   "channels and out_channels must divide by groups, and weight.shape[1] be "
                   "in_channels / groups")
    stride = _pair("conv2d", "stride", stride, 1)
    dilation = _pair("conv2d", "dilation", dilation, 1)
    padding = _padding("conv2d", padding, (kh, kw), dilation, stride)
    outs, og = [], o // groups
    for g in range(groups):
        xg = x if groups == 1 else x[:, g * cg : (g + 1) * cg]
        cols, (oh, ow) = _windows("conv2d", xg, (kh, kw), stride, padding, dilation, 0.0)
        wg = weight if groups == 1 else weight[g * og : (g + 1) * og]
        bg = None if bias is None else as_tensor(bias) if groups == 1 else \
            as_tensor(bias)[g * og : (g + 1) * og]
        # every window of the batch as one row: one product (and bias) for the whole batch
        rows, w2 = cols.reshape(n * oh * ow, cg * kh * kw), wg.reshape(og, cg * kh * kw)
        outs.append(apply(Op.MATMUL, rows, w2, trans_b=True) if bg is None else
                    apply(Op.LINEAR, rows, w2, bg))  # (N OH OW, O / g)
    y = outs[0] if groups == 1 else concatenate(outs, dim=1)
    return y.reshape(n, oh * ow, o).permute(0, 2, 1).reshape(n, o, oh, ow)


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """x (N, C, L), weight (O, C / groups, k) -> (N, O, OL), as torch.nn.functional.conv1d."""
    x, weight = _image("conv1d", x, 3), as_tensor(weight)
    if weight.ndim != 3:
        raise fail("conv1d", f"weight of shape {fmt(weight.shape)}",
                   "pass (out_channels, in_channels / groups, k)")
    pad = padding if isinstance(padding, str) else (0, _single("padding", padding, 0))
    y = conv2d(x.unsqueeze(2), weight.unsqueeze(2), bias, stride=(1, _single("stride", stride, 1)),
               padding=pad, dilation=(1, _single("dilation", dilation, 1)), groups=groups)
    return y.squeeze(2)


def _single(what, value, minimum):
    """A 1-d size: an int or a 1-tuple of one."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, (tuple, list)):  # _pair would take a pair's first size
        raise fail("conv1d", f"{what} must be an int or a 1-tuple, got {value!r}",
                   f"pass e.g. {what}=1")
    return _pair("conv1d", what, value, minimum)[0]


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The largest value of each window, as torch.nn.functional.max_pool2d: x (N, C, H, W) ->
    (N, C, OH, OW); the gradient goes to the window's first maximal element."""
    return _pool("max_pool2d", x, kernel_size, stride, padding, dilation, ceil_mode, None)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    """The mean of each window, as torch.nn.functional.avg_pool2d (padded zeros counted unless
    ``count_include_pad=False``)."""
    return _pool("avg_pool2d", x, kernel_size, stride, padding, 1, ceil_mode,
                 bool(count_include_pad))


def _pool(name, x, kernel_size, stride, padding, dilation, ceil_mode, count_include_pad):
    x = _image(name, x, 4)
    if ceil_mode:
        raise fail(name, "ceil_mode=True", "pass ceil_mode=False (the default)")
    kernel = _pair(name, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else _pair(name, "stride", stride, 1)
    dilation = _pair(name, "dilation", dilation, 1)
    ph, pw = _pair(name, "padding", padding, 0)
    if ph > kernel[0] // 2 or pw > kernel[1] // 2:
        raise fail(name, f"padding {(ph, pw)} for kernel {kernel}",
                   "pass at most half the kernel size, as PyTorch")
    n, c, h, w = x.shape
    per_channel = x.reshape(n * c, 1, h, w)
    maximum = count_include_pad is None
    windows, (oh, ow) = _windows(name, per_channel, kernel, stride, ((ph, ph), (pw, pw)),
                                 dilation, -math.inf if maximum else 0.0)
    if maximum:
        y = windows.max(2).values
    elif count_include_pad:
        y = windows.mean(2)
    else:  # divided by each window's count of real pixels (a constant of the shapes)
        idx, _ = window_index(1, h, w, kernel, stride, ((ph, ph), (pw, pw)), dilation)
        y = windows.sum(2) / (idx < h * w).sum(1).astype(np.float64 if x.dtype ==
                                                         np.float64 else np.float32)
    return y.reshape(n, c, oh, ow)
