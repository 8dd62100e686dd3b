"""``data_scale``: training on raw against standardised inputs."""

from __future__ import annotations

import time

import numpy as np

from ..data.digits import load_digits
from ..frontend import functional as F
from ..frontend.modes import no_grad
from ..training import nn, optim
from ..training.compile import compile as fg_compile
from ..training.fit import fit
from .dead_relus import standardiser
from .results import StudyResult, as_list, pyplot_figure, save_figure

__all__ = ["DataScaleResult", "data_scale"]


class DataScaleResult(StudyResult):
    """One row per (input scale, normalised?): gradient norm at init and training outcome;
    ``curves[(scale, normalised)]`` = loss per epoch."""

    name = "data_scale"

    def __init__(self, rows, curves, params=None, seconds=None):
        super().__init__(rows, params, seconds)
        self.curves = curves

    def plot(self, path):
        """Gradient norm at init against input scale (log-log), and loss curves."""
        fig, (a1, a2) = pyplot_figure(ncols=2, width=4.6, height=3.6)
        for norm in (False, True):
            rs = [r for r in self.rows if r["normalised"] == norm]
            a1.plot([r["scale"] for r in rs], [r["grad_norm_init"] for r in rs], "o-",
                    label="normalised" if norm else "raw")
        a1.set_xscale("log")
        a1.set_yscale("log")
        a1.set_xlabel("input scale")
        a1.set_ylabel("||dL/dW|| at W = 0")
        a1.legend(fontsize=7)
        for (scale, norm), c in self.curves.items():
            a2.plot(np.arange(1, len(c) + 1), c, "o-" if norm else "s--", ms=3,
                    label=f"x{scale:g} {'normalised' if norm else 'raw'}")
        a2.set_yscale("log")
        a2.set_xlabel("epoch")
        a2.set_ylabel("training loss")
        a2.legend(fontsize=6)
        return save_figure(fig, path)


def data_scale(scales=(1, 10, 1000), lr=0.1, epochs=5, batch=32, seed=0):
    """The gradient of a linear model scales with its input: softmax regression (64 -> 10) on
    the digits, inputs multiplied by each of ``scales``, trained by SGD at one fixed ``lr``,
    raw and standardised (zero mean, unit variance over all pixels, which undoes the scale).

    Returns a :class:`DataScaleResult`: per (scale, normalised), grad_norm_init (||dL/dW|| at
    W = 0: exactly proportional to the scale when raw), final train loss, test accuracy and
    whether the loss went non-finite.

    >>> r = data_scale(scales=(1, 1000), epochs=1)
    >>> raw = [row["grad_norm_init"] for row in r.rows if not row["normalised"]]
    >>> round(raw[1] / raw[0], 6)
    1000.0
    """

    t0 = time.perf_counter()
    Xtr, ytr, Xte, yte = load_digits(seed=seed, dtype=np.float64)
    rows, curves = [], {}
    for norm in (False, True):
        for scale in as_list(scales):
            A, B = Xtr * scale, Xte * scale
            if norm:
                mu, sd = standardiser(A)
                A, B = (A - mu) / sd, (B - mu) / sd
            model = nn.Linear(64, 10, init="normal", std=0.0)  # W = 0, b = 0
            loss = F.cross_entropy(model(A), ytr)
            loss.backward()
            g0 = float(np.linalg.norm(model.weight.grad))
            model.zero_grad()
            opt = optim.SGD(model.parameters(), lr=lr)
            step = fg_compile(lambda xb, yb, m=model: F.cross_entropy(m(xb), yb), optimizer=opt)
            with np.errstate(all="ignore"):
                hist = fit(step, A, ytr, epochs=epochs, batch_size=batch, seed=seed,
                           drop_last=True, progress=False)
                with no_grad():
                    acc = float(np.mean(model(B).numpy().argmax(axis=1) == yte))
            losses = np.array(hist.loss)
            curves[(float(scale), norm)] = losses
            rows.append({"scale": float(scale), "normalised": norm, "grad_norm_init": g0,
                         "final_loss": float(losses[-1]), "test_accuracy": acc,
                         "diverged": bool(not np.isfinite(losses).all())})
    params = {"scales": [float(s) for s in as_list(scales)], "lr": lr, "epochs": epochs,
              "batch": batch, "seed": seed}
    return DataScaleResult(rows, curves, params, time.perf_counter() - t0)
