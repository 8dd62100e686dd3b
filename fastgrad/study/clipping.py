"""``gradient_clipping``: training an RNN on the adding problem (Hochreiter & Schmidhuber's
long-range task, ``adding_problem``) with and without clipping the gradient's norm."""

from __future__ import annotations

import math
import time

import numpy as np

from ..core.errors import fail
from ..frontend import functional as F
from ..frontend.tensor import tensor
from ..training import nn, optim
from .results import StudyResult, as_list, first_index, pyplot_figure, save_figure
from .spectral import set_spectral_radius

__all__ = ["ClippingResult", "adding_problem", "gradient_clipping"]


def adding_problem(n, T, seed=0):
    """The adding problem (Hochreiter & Schmidhuber 1997): inputs (T, n, 2) of a value in
    [0, 1) and a marker, exactly two markers per sequence (one in each half); the target
    (n, 1) is the sum of the two marked values. Predicting 1 scores an MSE of about 1/6.

    >>> x, y = adding_problem(4, 10, seed=0)
    >>> x.shape, y.shape, x[:, :, 1].sum(axis=0).tolist()
    ((10, 4, 2), (4, 1), [2.0, 2.0, 2.0, 2.0])
    """
    rng = np.random.default_rng(seed)
    x = np.zeros((T, n, 2))
    x[:, :, 0] = rng.uniform(0, 1, (T, n))
    half = max(T // 2, 1)
    a = rng.integers(0, half, n)
    b = rng.integers(half, T, n) if T > 1 else a
    cols = np.arange(n)
    x[a, cols, 1] = 1.0
    x[b, cols, 1] = 1.0
    y = (x[a, cols, 0] + x[b, cols, 0]).reshape(n, 1)
    return x, y


class ClippingResult(StudyResult):
    """One row per run (clipped or not): losses and gradient norms over training;
    ``curves[label]`` = {"loss": (steps,), "grad_norm": (steps,)} (norms before clipping)."""

    name = "gradient_clipping"

    def __init__(self, rows, curves, params=None, seconds=None):
        super().__init__(rows, params, seconds)
        self.curves = curves

    def plot(self, path):
        """Loss curves side by side (one panel per run), and the gradient norms before clipping."""
        n = len(self.curves)
        fig, axes = pyplot_figure(ncols=n + 1, width=4.2, height=3.8)
        for ax, (label, c) in zip(axes, self.curves.items()):
            ax.plot(np.arange(1, c["loss"].size + 1), c["loss"], lw=0.8)
            ax.axhline(1 / 6, color="gray", ls=":", lw=0.8, label="predict 1 (MSE 1/6)")
            bad = first_index(~np.isfinite(c["loss"]))
            if bad is not None:
                ax.axvline(bad + 1, color="red", lw=0.8, label=f"non-finite from step {bad + 1}")
            ax.set_yscale("log")
            ax.set_title(label)
            ax.set_xlabel("step")
            ax.set_ylabel("training loss (MSE)")
            ax.legend(fontsize=7)
        ax = axes[-1]
        for label, c in self.curves.items():
            ax.plot(np.arange(1, c["grad_norm"].size + 1), c["grad_norm"], lw=0.7, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("||grad|| before clipping")
        ax.legend(fontsize=7)
        return save_figure(fig, path)


def gradient_clipping(T=50, hidden=32, steps=300, batch=32, lr=0.05, max_norm=1.0, radius=1.5,
                      task="adding", seed=0):
    """Train the same RNN on the adding problem with and without
    ``fg.nn.utils.clip_grad_norm_(params, max_norm)``: same initialisation, same batches.

    An Elman tanh RNN (input 2, ``hidden`` units, W_hh rescaled to spectral radius ``radius``:
    > 1 invites exploding gradients) and a linear read-out of h_T, trained by plain SGD at ``lr``
    on fresh batches of ``batch`` sequences of length T. max_norm may be a list (one run each).

    Returns a :class:`ClippingResult`: per run, final_loss (mean of the last 10% of steps),
    best_loss, max_grad_norm, clipped_steps (steps whose norm exceeded max_norm) and
    first_nonfinite_step; ``curves`` for the plot.

    >>> r = gradient_clipping(T=5, hidden=4, steps=3, batch=2)
    >>> [row["run"] for row in r.rows]
    ['no clipping', 'clip_grad_norm_(1)']
    """

    if task != "adding":
        raise fail("gradient_clipping", f"unknown task {task!r}", "use task='adding'")
    t0 = time.perf_counter()
    data = [adding_problem(batch, T, seed=[seed, i]) for i in range(steps)]
    runs = [None] + [float(m) for m in as_list(max_norm)]
    rows, curves = [], {}
    for clip in runs:
        rnn = nn.RNN(2, hidden, seed=seed)
        set_spectral_radius(rnn.weight_hh_l0, radius)
        head = nn.Linear(hidden, 1, seed=seed + 1)
        params = rnn.parameters() + head.parameters()
        opt = optim.SGD(params, lr=lr)
        losses, gnorms = np.full(steps, np.nan), np.full(steps, np.nan)
        for i, (x, y) in enumerate(data):
            opt.zero_grad()
            with np.errstate(all="ignore"):
                _, h_T = rnn(x)
                loss = F.mse_loss(head(h_T), tensor(y))
                loss.backward()
            if clip is None:
                norm = math.sqrt(sum(float(np.sum(np.square(p.grad))) for p in params
                                     if p.grad is not None))
            else:
                norm = nn.utils.clip_grad_norm_(params, clip)
            with np.errstate(all="ignore"):
                opt.step()
            losses[i], gnorms[i] = loss.item(), norm
        label = "no clipping" if clip is None else f"clip_grad_norm_({clip:g})"
        curves[label] = {"loss": losses, "grad_norm": gnorms}
        tail = losses[-max(steps // 10, 1):]
        rows.append({
            "run": label, "max_norm": clip,
            "final_loss": float(np.mean(tail)) if np.isfinite(tail).all() else float("nan"),
            "best_loss": float(np.nanmin(losses)) if np.isfinite(losses).any() else float("nan"),
            "max_grad_norm": float(np.nanmax(gnorms)) if np.isfinite(gnorms).any() else float(
                "inf"),
            "clipped_steps": int(np.sum(gnorms > clip)) if clip is not None else 0,
            "first_nonfinite_step": first_index(~np.isfinite(losses) | ~np.isfinite(gnorms)),
        })
    params = {"task": task, "T": T, "hidden": hidden, "steps": steps, "batch": batch, "lr": lr,
              "radius": radius, "max_norm": runs[1:], "seed": seed}
    return ClippingResult(rows, curves, params, time.perf_counter() - t0)
