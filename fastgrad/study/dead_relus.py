"""``dead_relus``: the fraction of ReLU units that never fire, under a few initialisation and
learning-rate scenarios."""

from __future__ import annotations

import time

import numpy as np

from ..core.errors import fail
from ..data.digits import load_digits
from ..frontend import functional as F
from ..frontend.modes import no_grad
from ..training import nn, optim
from ..training.compile import compile as fg_compile
from ..training.fit import fit
from .results import StudyResult, as_list, pyplot_figure, save_figure
from .saturation import probed_forward

__all__ = ["DeadReLUResult", "SCENARIOS", "dead_relu_fraction", "dead_relus", "standardiser"]


def standardiser(X):
    """One mean and one standard deviation over all pixels of the training set. (Per-pixel
    statistics would turn a pixel that is almost always blank in training into a huge input
    on the test image where it is not.)"""
    return float(X.mean()), float(X.std())


def dead_relu_fraction(model, X):
    """Per hidden layer of a ReLU ``fg.nn.MLP``: the fraction of units that never fire
    (output 0 for every row of X (N, in)). Returns a list, layer 1 first.

    >>> import fastgrad as fg
    >>> m = fg.nn.MLP([2, 4, 1], activation="relu")
    >>> m.layers[0].weight.numpy()[...] = [[1, 1], [-1, -1], [1, 0], [-1, 0]]
    >>> m.layers[0].bias.numpy()[...] = 0
    >>> dead_relu_fraction(m, np.array([[1.0, 2.0], [3.0, 0.5]]))
    [0.5]
    """

    if not all(np.isfinite(p.numpy()).all() for p in model.parameters()):
        return [float("nan")] * (len(model.layers) - 1)  # diverged: "dead" would be a lie
    with no_grad():
        _, hidden = probed_forward(model, np.asarray(X, model.parameters()[0].dtype),
                                    probes=False)
        return [float(np.mean(np.all(h.numpy() <= 0, axis=0))) for _, h, _ in hidden]


SCENARIOS = {
    "baseline": "Kaiming init, zero biases, standardised pixels (zero mean, unit variance)",
    "bad_init": "biases initialised to -3 (most units start below zero)",
    "large_lr": "baseline with a too-large SGD learning rate (large_lr)",
    "unnormalised": "raw pixel values 0..255, not centred",
}


class DeadReLUResult(StudyResult):
    """One row per (scenario, epoch): dead fraction per hidden layer, loss, test accuracy
    (epoch 0 is at initialisation)."""

    name = "dead_relus"

    def plot(self, path):
        """Dead fraction of each layer against epochs, one panel per scenario."""
        scen = list(dict.fromkeys(r["scenario"] for r in self.rows))
        fig, axes = pyplot_figure(ncols=len(scen), width=3.6, height=3.4)
        cols = [c for c in self.columns if c.startswith("dead_layer")]
        for ax, s in zip(axes, scen):
            rs = [r for r in self.rows if r["scenario"] == s]
            for c in cols:
                ax.plot([r["epoch"] for r in rs], [r[c] for r in rs], "o-", ms=3,
                        label=c.replace("dead_", ""))
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(s, fontsize=9)
            ax.set_xlabel("epoch (0 = init)")
            ax.set_ylabel("fraction of dead units")
            ax.legend(fontsize=7)
        return save_figure(fig, path)


def dead_relus(scenarios=tuple(SCENARIOS), hidden=(64, 64, 64), epochs=5, batch=32, seed=0,
               lr=0.05, large_lr=0.8, bad_bias=-3.0):
    """Dead ReLUs on the digits data set: the fraction of units per hidden layer that never fire
    on the training set, at initialisation and after every epoch of SGD (full batches of
    ``batch``), under each scenario of ``SCENARIOS`` (bad initialisation, a too-large learning
    rate, unnormalised data). A network whose parameters went non-finite reports NaN, not "dead".

    Returns a :class:`DeadReLUResult`: rows (scenario, epoch, dead_layer1.., loss, accuracy).

    >>> r = dead_relus(scenarios=["bad_init"], hidden=(8,), epochs=1)
    >>> [(row["scenario"], row["epoch"]) for row in r.rows]
    [('bad_init', 0), ('bad_init', 1)]
    """

    t0 = time.perf_counter()
    Xtr, ytr, Xte, yte = load_digits(seed=seed, dtype=np.float64)
    mu, sd = standardiser(Xtr)
    rows = []
    for name in as_list(scenarios) if not isinstance(scenarios, str) else [scenarios]:
        if name not in SCENARIOS:
            raise fail("dead_relus", f"unknown scenario {name!r}", f"use {list(SCENARIOS)}")
        if name == "unnormalised":
            A, B = Xtr * 255.0, Xte * 255.0
        else:
            A, B = (Xtr - mu) / sd, (Xte - mu) / sd
        model = nn.MLP([64, *hidden, 10], activation="relu", init="kaiming_normal", seed=seed)
        for layer in model.layers:
            layer.bias.numpy()[...] = bad_bias if name == "bad_init" else 0.0
        opt = optim.SGD(model.parameters(), lr=large_lr if name == "large_lr" else lr)
        step = fg_compile(lambda xb, yb, m=model: F.cross_entropy(m(xb), yb), optimizer=opt)
        loss = None
        for epoch in range(epochs + 1):
            if epoch:
                with np.errstate(all="ignore"):
                    hist = fit(step, A, ytr, epochs=1, batch_size=batch, seed=seed * 1000 + epoch,
                               drop_last=True, progress=False)
                loss = hist.loss[-1]
            dead = dead_relu_fraction(model, A)
            with no_grad(), np.errstate(all="ignore"):
                acc = float(np.mean(model(B).numpy().argmax(axis=1) == yte))
            row = {"scenario": name, "epoch": epoch}
            row.update({f"dead_layer{i + 1}": d for i, d in enumerate(dead)})
            row.update({"train_loss": loss, "test_accuracy": acc})
            rows.append(row)
    params = {"hidden": list(hidden), "epochs": epochs, "batch": batch, "lr": lr,
              "large_lr": large_lr, "bad_bias": bad_bias, "seed": seed}
    return DeadReLUResult(rows, params, time.perf_counter() - t0)
