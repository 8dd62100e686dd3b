"""Loss functions with PyTorch's signatures and meanings (torch.nn.functional's), built from
the registry's ops: the fused ``cross_entropy`` and ``bce_logits`` rows where they apply,
compositions otherwise (a per-sample weight, an ignored class, label smoothing, probability
targets), so that every loss records and compiles like any other code.

Reductions: ``"mean"`` (PyTorch's default; weighted losses divide by the summed weights of
the samples counted, as PyTorch), ``"sum"``, ``"none"``.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import fail
from ..ops import Op, fmt, real
from .modes import is_replayed
from .inputs import guard_new
from .tensor import Tensor, apply, as_tensor, real_array, take, where

__all__ = ["binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy",
           "huber_loss", "kl_div", "l1_loss", "mse_loss", "nll_loss", "one_hot",
           "smooth_l1_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(name, reduction):
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise fail(name, f"unknown reduction {reduction!r}", "use 'mean', 'sum' or 'none'")


def _reduce(loss, reduction, name, total=None):
    """``loss`` reduced; ``total``: the divisor of "mean" (a weight sum) instead of the count."""
    _check_reduction(name, reduction)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if total is None else loss.sum() / total


def _as(values, like, name="loss", what="weight"):
    """``values`` (an array, tensor or number) as a tensor in the float dtype of ``like``."""
    t = values if isinstance(values, Tensor) else as_tensor(real_array(name, what, values))
    dtype = like.tape.dtype if like._tape is not None else like.dtype
    return t if t.dtype == dtype or t._tape is not None else t.astype(dtype)


def _same_shape(name, pred, target):
    pred, target = as_tensor(pred), as_tensor(target)
    if pred.shape != target.shape:
        raise fail(name, f"input {fmt(pred.shape)} and target {fmt(target.shape)} differ",
                   "reshape the target to the input's shape (e.g. y.reshape(-1, 1))")
    return pred, target


def mse_loss(pred, target, reduction="mean"):
    """Mean squared error, mean((pred - target)^2), as torch.nn.functional.mse_loss.

    pred and target must have the same shape (no silent broadcasting, a common bug).

    >>> import fastgrad as fg
    >>> fg.mse_loss(fg.tensor([1.0, 2.0]), fg.tensor([0.0, 0.0])).item()
    2.5
    """
    pred, target = _same_shape("mse_loss", pred, target)
    diff = pred - target
    return _reduce(diff * diff, reduction, "mse_loss")


def l1_loss(pred, target, reduction="mean"):
    """mean(|pred - target|), as torch.nn.functional.l1_loss (same shapes)."""
    pred, target = _same_shape("l1_loss", pred, target)
    return _reduce((pred - target).abs(), reduction, "l1_loss")


def smooth_l1_loss(pred, target, reduction="mean", beta=1.0):
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (d = pred - target), as
    torch.nn.functional.smooth_l1_loss; beta = 0 is the L1 loss."""
    pred, target = _same_shape("smooth_l1_loss", pred, target)
    beta = real("smooth_l1_loss", "beta", beta)
    if not beta >= 0:
        raise fail("smooth_l1_loss", f"beta {beta} is negative", "pass beta >= 0")
    d = (pred - target).abs()
    if beta == 0:
        return _reduce(d, reduction, "smooth_l1_loss")
    return _reduce(where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta), reduction,
                   "smooth_l1_loss")


def huber_loss(pred, target, reduction="mean", delta=1.0):
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta), as
    torch.nn.functional.huber_loss."""
    pred, target = _same_shape("huber_loss", pred, target)
    delta = real("huber_loss", "delta", delta)
    if not delta > 0:
        raise fail("huber_loss", f"delta {delta} is not positive", "pass delta > 0")
    d = (pred - target).abs()
    return _reduce(where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta)), reduction,
                   "huber_loss")


def kl_div(input, target, reduction="mean", log_target=False):  # noqa: A002 - PyTorch's name
    """target * (log target - input) elementwise (0 where target is 0), for ``input`` holding
    log-probabilities, as torch.nn.functional.kl_div; ``reduction="batchmean"`` divides the
    sum by the batch size (the KL divergence), ``"mean"`` by the element count (PyTorch's
    default, which it warns about)."""
    x, t = as_tensor(input), as_tensor(target)
    if log_target:
        pointwise = t.exp() * (t - x)
    else:  # xlogy: 0 * log 0 is 0 (a negative target gives NaN, as PyTorch)
        zero = t == 0
        pointwise = where(zero, 0.0, t * where(zero, 1.0, t).log()) - t * x
    if isinstance(reduction, str) and reduction == "batchmean":
        return pointwise.sum() / (x.shape[0] if x.ndim else 1)
    return _reduce(pointwise, reduction, "kl_div")


def binary_cross_entropy(input, target, weight=None, reduction="mean"):  # noqa: A002
    """-(t log p + (1 - t) log(1 - p)) for probabilities ``input``, each log clamped at -100,
    as torch.nn.functional.binary_cross_entropy (same shapes; ``weight`` broadcasts)."""
    p, t = _same_shape("binary_cross_entropy", input, target)
    # log(max(p, e^-100)) is PyTorch's log clamped at -100, with a zero (not NaN) slope where
    # p is 0 or 1
    floor = math.exp(-100.0)
    loss = -(t * p.clip(min=floor).log() + (1 - t) * (1 - p).clip(min=floor).log())
    if weight is not None:
        loss = loss * _as(weight, loss)
    return _reduce(loss, reduction, "binary_cross_entropy")


def binary_cross_entropy_with_logits(logits, targets, weight=None, reduction="mean",
                                     pos_weight=None):
    """Sigmoid + binary cross-entropy, stably: softplus(x) - x t, elementwise (one row), as
    torch.nn.functional.binary_cross_entropy_with_logits. ``pos_weight`` scales the positive
    term: (1 - t) x + (1 + (pos_weight - 1) t) softplus(-x). Targets have the logits' shape.

    >>> import fastgrad as fg
    >>> round(fg.binary_cross_entropy_with_logits(fg.tensor([0.0]), fg.tensor([1.0])).item(), 6)
    0.693147
    """
    if isinstance(weight, str):  # fastgrad's older positional reduction
        weight, reduction = None, weight
    logits, targets = _same_shape("binary_cross_entropy_with_logits", logits, targets)
    if pos_weight is None:
        loss = apply(Op.BCE_LOGITS, logits, targets)
    else:
        x, t = as_tensor(logits), as_tensor(targets)
        loss = (1 - t) * x + (1 + (_as(pos_weight, x) - 1) * t) * (-x).softplus()
    if weight is not None:
        loss = loss * _as(weight, loss)
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def one_hot(labels, num_classes=-1):
    """(..., num_classes) int64 rows with a 1 at each label, as torch.nn.functional.one_hot
    (``num_classes=-1``: the largest label + 1). Inside fg.compile the labels are an input of
    each call, so ``num_classes`` must be given there."""
    y = as_tensor(labels)
    if y.dtype.kind not in "iu":
        raise fail("one_hot", f"labels must be integers, got {y.dtype}", "pass int64 labels")
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < -1:
        raise fail("one_hot", f"num_classes must be an int (or -1), got {num_classes!r}",
                   "pass the number of classes")
    if num_classes == -1:
        if y._tape is not None or is_replayed():
            raise fail("one_hot", "num_classes=-1 reads the labels' values, which change "
                       "with each call inside fg.compile", "pass num_classes")
        num_classes = int(y.numpy().max()) + 1 if y.size else 0
    guard_new("one_hot", (max(y.size, 1) + num_classes) * num_classes * 8,
              (y.size, num_classes))
    eye = np.eye(num_classes, dtype=np.int64)
    if y._tape is None and not is_replayed():
        values = y.numpy()
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise fail("one_hot", f"a label is outside [0, {num_classes})",
                       "pass labels in [0, num_classes)")
        return Tensor(eye[values])
    dtype = y.tape.dtype if y._tape is not None else np.float64
    return take(eye.astype(dtype), y, axis=0)._shown_as(np.int64)


def _class_rows(name, x, target):
    """Logits or log-probabilities (N, C, d...) as (M, C) rows and their targets: class
    indices (M,), or probabilities (M, C); plus the shape of a "none" result."""
    x, target = as_tensor(x), as_tensor(target)
    probabilities = target.dtype.kind == "f"
    if x.ndim == 1:  # one sample: (C,) with a scalar target
        return (x.reshape(1, -1), target.reshape(1, -1) if probabilities else target.reshape(1),
                ())
    if x.ndim < 1:
        raise fail(name, "input is 0-d", "pass (N, C) or (C,) scores")
    want = x.shape if probabilities else (x.shape[0],) + x.shape[2:]
    if probabilities and target.shape == (x.shape[0],) + x.shape[2:]:
        raise fail(name, f"target holds floats of shape {fmt(target.shape)} for input "
                   f"{fmt(x.shape)}", "class indices must be integers (int64); class "
                   "probabilities have the input's shape")
    if target.shape != want:
        raise fail(name, f"input {fmt(x.shape)} and target {fmt(target.shape)}",
                   f"pass class indices of shape {fmt((x.shape[0],) + x.shape[2:])} or "
                   f"probabilities of shape {fmt(x.shape)}")
    out_shape = (x.shape[0],) + x.shape[2:]
    if x.ndim > 2:  # (N, C, d...) -> (N d..., C)
        order = (0, *range(2, x.ndim), 1)
        c = x.shape[1]
        x = x.permute(order).reshape(-1, c)
        target = target.permute(order).reshape(-1, c) if probabilities else target.reshape(-1)
    return x, target, out_shape


def _sample_weights(name, weight, labels, classes, ignore_index, dtype):
    """Each sample's weight w[y_i] (0 for an ignored class), gathered from the labels so that
    it follows the labels of each call inside fg.compile; None when every weight is 1."""
    if weight is None and not 0 <= ignore_index < classes:
        return None
    w = np.ones(classes) if weight is None else np.array(
        real_array(name, "weight", weight), np.float64)
    if w.shape != (classes,):
        raise fail(name, f"weight of shape {fmt(w.shape)} for {classes} classes",
                   f"pass one weight per class, shape {fmt((classes,))}")
    if 0 <= ignore_index < classes:
        w[ignore_index] = 0.0
    return take(w.astype(dtype), labels, axis=0)


def _eager_ignored(labels, ignore_index, classes):
    """Labels equal to an ``ignore_index`` outside [0, C) (PyTorch's default -100), eagerly:
    (labels with those set to 0, a 0/1 mask of the kept samples), else (labels, None)."""
    if 0 <= ignore_index < classes or labels._tape is not None or is_replayed():
        return labels, None
    values = labels.numpy()
    ignored = values == ignore_index
    if not ignored.any():
        return labels, None
    return Tensor(np.where(ignored, 0, values)), Tensor((~ignored).astype(np.int64))


def _ignore_index(name, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise fail(name, f"ignore_index must be an int, got {value!r}", "pass a class index")
    return int(value)


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):  # noqa: A002
    """-w[y] logp[y] for log-probabilities ``input`` (N, C, d...) and class indices ``target``,
    as torch.nn.functional.nll_loss (mean: divided by the summed weights of the samples)."""
    _check_reduction("nll_loss", reduction)
    ignore_index = _ignore_index("nll_loss", ignore_index)
    logp, labels, out_shape = _class_rows("nll_loss", input, target)
    if labels.dtype.kind == "f":
        raise fail("nll_loss", "target holds floats", "pass class indices (int64)")
    used, kept = _eager_ignored(labels, ignore_index, logp.shape[1])
    return _weighted_nll("nll_loss", -(logp * one_hot(used, logp.shape[1])).sum(1), logp,
                         used, kept, weight, ignore_index, reduction, out_shape, 0.0)


def _weighted_nll(name, nll, logp, labels, kept, weight, ignore_index, reduction, out_shape,
                  label_smoothing):
    """The per-sample losses ``nll`` (M,) weighted, smoothed and reduced as PyTorch's;
    ``labels, kept`` as ``_eager_ignored`` returns them."""
    classes = logp.shape[1]
    dtype = logp.tape.dtype if logp._tape is not None else logp.dtype
    w = _sample_weights(name, weight, labels, classes, ignore_index, dtype)
    if kept is not None:
        w = kept if w is None else w * kept
    loss = nll if w is None else nll * w
    if label_smoothing:
        per_class = -logp if weight is None else -logp * _as(weight, logp)
        smooth = per_class.sum(1)
        if w is not None:  # an ignored sample counts for nothing
            smooth = smooth * (w != 0)
        loss = (1 - label_smoothing) * loss + (label_smoothing / classes) * smooth
    if reduction == "none":
        return loss.reshape(out_shape)
    return _reduce(loss, reduction, name, None if w is None else w.sum())


def cross_entropy(logits, labels, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """Softmax cross-entropy as torch.nn.functional.cross_entropy: logits (N, C) or
    (N, C, d...) or (C,); ``labels`` class indices (N, d...) or class probabilities (the
    logits' shape); ``weight`` per class, ``ignore_index``, ``label_smoothing``. Stable at any
    logit scale; the plain case is one fused row.

    >>> import fastgrad as fg, numpy as np
    >>> round(fg.cross_entropy(fg.tensor([[0.0, 0.0]]), np.array([1])).item(), 6)
    0.693147
    """
    if isinstance(weight, str):  # fastgrad's older positional reduction
        weight, reduction = None, weight
    _check_reduction("cross_entropy", reduction)
    label_smoothing = real("cross_entropy", "label_smoothing", label_smoothing)
    ignore_index = _ignore_index("cross_entropy", ignore_index)
    if not 0.0 <= label_smoothing <= 1.0:
        raise fail("cross_entropy", f"label_smoothing {label_smoothing}",
                   "pass a value in [0, 1]")
    x, target, out_shape = _class_rows("cross_entropy", logits, labels)
    classes = x.shape[1]
    if target.dtype.kind == "f":  # class probabilities
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / classes
        logp = x.log_softmax(1)
        per_class = -logp * target if weight is None else -logp * target * _as(weight, logp)
        loss = per_class.sum(1)
        return loss.reshape(out_shape) if reduction == "none" else _reduce(
            loss, reduction, "cross_entropy")
    used, kept = _eager_ignored(target, ignore_index, classes)
    if weight is None and not label_smoothing and not 0 <= ignore_index < classes and \
            kept is None:  # the fused row: log-sum-exp minus the label's logit
        loss = apply(Op.CROSS_ENTROPY, x, used)
        return loss.reshape(out_shape) if reduction == "none" else _reduce(
            loss, reduction, "cross_entropy")
    logp = x.log_softmax(1)
    nll = -(logp * one_hot(used, classes)).sum(1)
    return _weighted_nll("cross_entropy", nll, logp, used, kept, weight, ignore_index,
                         reduction, out_shape, label_smoothing)
