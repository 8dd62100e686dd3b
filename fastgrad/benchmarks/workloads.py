"""The MLP benchmark workloads (from the training issue) and the implementations timed on them.

Each workload is one training step (forward + backward + SGD update) of an MLP. Every
implementation starts from the same weights and data. Peers (PyTorch, JAX) are used only when
installed. ``fastgrad bench`` (``runner.py``) times them; so do the pytest-benchmark suites in
the project's ``bench/`` folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import fastgrad as fg

from .baselines import NumbaStep, numpy_step

__all__ = ["IMPLEMENTATIONS", "MLP_WORKLOADS", "QUICK_MLP_WORKLOADS", "Workload", "available",
           "data", "implementations", "jax_sgd_step", "make_fastgrad", "make_fastgrad_eager",
           "make_fastgrad_plain", "make_fastgrad_scipy_blas", "make_jax", "make_numba",
           "make_numpy", "make_torch", "torch_dtype", "torch_sgd_step", "usable_cores", "weights"]


@dataclass
class Workload:
    name: str
    sizes: list
    act: str
    loss: str  # "mse" or "ce"
    batch: int
    lr: float = 0.01

    kind = "mlp"
    steps = 1  # steps per training step (an RNN's is its unroll length T)
    repeat = 7  # rounds of ``median_time`` by default
    min_time = 0.2  # each round lasts about min_time / 4 (fastgrad.core.timing.median_time)
    warmup = 2  # untimed calls after the first (which traces or compiles this shape)
    dtypes = ("float32", "float64")

    def tiny(self):
        """A tiny workload on the same code paths: run first, so that compiling or loading an
        implementation's kernels is not part of this workload's measurement."""
        return QUICK_MLP_WORKLOADS[0]


MLP_WORKLOADS = [
    Workload("tiny-2-16-16-1-tanh-b100", [2, 16, 16, 1], "tanh", "mse", 100),
    Workload("mlp-784-128-10-relu-b64", [784, 128, 10], "relu", "ce", 64),
    Workload("mlp-784-128-10-relu-b1024", [784, 128, 10], "relu", "ce", 1024),
    Workload("deep-64-8x64-10-sigmoid-b32", [64] + [64] * 8 + [10], "sigmoid", "ce", 32),
]

# ``fastgrad bench --quick`` (the test suite) and the warm-up that compiles or loads every
# implementation's kernels before a measurement: tiny, but the same code paths.
QUICK_MLP_WORKLOADS = [Workload("quick-mlp-8-16-4-tanh-b8", [8, 16, 4], "tanh", "ce", 8)]


def data(w: Workload, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(w.batch, w.sizes[0])).astype(dtype)
    if w.loss == "mse":
        y = rng.normal(size=(w.batch, w.sizes[-1])).astype(dtype)
    else:
        y = rng.integers(0, w.sizes[-1], w.batch).astype(np.int64)
    return x, y


def weights(w: Workload, dtype, seed=1):
    model = fg.nn.MLP(w.sizes, activation=w.act, seed=seed)
    return [p.numpy().astype(dtype) for p in model.parameters()]


def make_fastgrad(w, dtype):
    model = fg.nn.MLP(w.sizes, activation=w.act, seed=1, dtype=dtype)
    opt = fg.optim.SGD(model.parameters(), lr=w.lr)
    loss = fg.mse_loss if w.loss == "mse" else fg.cross_entropy
    return fg.compile(lambda x, y: loss(model(x), y), optimizer=opt)


def make_fastgrad_plain(w, dtype):
    """The same model written with plain ops, as a user writes it without ``fg.nn``:
    ``h @ W.T + b`` then the activation per layer (fg.nn.MLP records one fused row per layer).
    Same weights, same compiled SGD step (issue "Native speed for the code people write")."""
    params = [fg.tensor(p, requires_grad=True) for p in weights(w, dtype)]
    opt = fg.optim.SGD(params, lr=w.lr)
    loss = fg.mse_loss if w.loss == "mse" else fg.cross_entropy
    n_layers = len(params) // 2

    def fn(x, y):
        h = x
        for i in range(n_layers):
            h = h @ params[2 * i].T + params[2 * i + 1]
            if i < n_layers - 1:
                h = getattr(h, w.act)()
        return loss(h, y)

    return fg.compile(fn, optimizer=opt)


def make_fastgrad_scipy_blas(w, dtype):
    """fastgrad's step with SciPy's BLAS: the default install's, beside an MKL run's
    (the runner sets FASTGRAD_BLAS=scipy for this cell's process)."""
    from fastgrad.kernels import blas

    if blas.PROVIDER != "scipy":
        raise RuntimeError(f"fastgrad-scipy needs FASTGRAD_BLAS=scipy, got {blas.PROVIDER}")
    return make_fastgrad(w, dtype)


def make_fastgrad_eager(w, dtype):
    model = fg.nn.MLP(w.sizes, activation=w.act, seed=1, dtype=dtype)
    opt = fg.optim.SGD(model.parameters(), lr=w.lr)
    loss = fg.mse_loss if w.loss == "mse" else fg.cross_entropy

    def step(x, y):
        opt.zero_grad()
        out = loss(model(x), y)
        out.backward()
        opt.step()
        return out.item()

    return step


def make_numpy(w, dtype):
    params = weights(w, dtype)
    return lambda x, y: numpy_step(params, x, y, w.act, w.loss, w.lr)


def make_numba(w, dtype):
    return NumbaStep(weights(w, dtype), w.sizes, w.batch, w.act, w.loss, w.lr, dtype)


def make_torch(w, dtype):
    import torch

    tdt = torch_dtype(dtype)
    layers = []
    for i, (a, b) in enumerate(zip(w.sizes[:-1], w.sizes[1:])):
        layers.append(torch.nn.Linear(a, b).to(tdt))
        if i < len(w.sizes) - 2:
            layers.append({"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh,
                           "sigmoid": torch.nn.Sigmoid}[w.act]())
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for p, v in zip(model.parameters(), weights(w, dtype)):
            p.copy_(torch.from_numpy(v))
    lossf = torch.nn.functional.mse_loss if w.loss == "mse" else torch.nn.functional.cross_entropy
    return torch_sgd_step(model.parameters(), w.lr, lambda x, y: lossf(model(x), y))


def torch_sgd_step(params, lr, loss_of):
    """A PyTorch eager SGD step called with NumPy (x, y): ``loss_of(x, y)`` on tensors, then
    zero_grad, backward and the update; returns the loss as a float."""
    import torch

    opt = torch.optim.SGD(list(params), lr=lr)

    def step(x, y):
        opt.zero_grad()
        loss = loss_of(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        opt.step()
        return loss.item()

    return step


def make_jax(w, dtype):
    import jax
    import jax.numpy as jnp

    if np.dtype(dtype) == np.float64:
        jax.config.update("jax_enable_x64", True)
    params = [jnp.asarray(p) for p in weights(w, dtype)]
    act = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid}[w.act]

    def loss_fn(ps, x, y):
        h = x
        n = len(ps) // 2
        for i in range(n):
            h = h @ ps[2 * i].T + ps[2 * i + 1]
            if i < n - 1:
                h = act(h)
        if w.loss == "mse":
            return jnp.mean((h - y) ** 2)
        return -jnp.mean(jax.nn.log_softmax(h)[jnp.arange(h.shape[0]), y])

    return jax_sgd_step(loss_fn, params, w.lr)


def jax_sgd_step(loss_fn, params, lr):
    """A jitted value-and-grad + SGD update of ``loss_fn(params, x, y)``, called with (x, y)."""
    import jax

    @jax.jit
    def update(ps, x, y):
        value, grads = jax.value_and_grad(loss_fn)(ps, x, y)
        return value, [p - lr * g for p, g in zip(ps, grads)]

    state = {"p": params}

    def step(x, y):
        value, state["p"] = update(state["p"], x, y)
        return float(value)

    return step


def torch_dtype(dtype):
    """The torch dtype for a NumPy float dtype; also gives torch one thread per usable core,
    as NumPy's BLAS and Numba have."""
    import torch

    torch.set_num_threads(usable_cores())
    return torch.float32 if np.dtype(dtype) == np.float32 else torch.float64


def usable_cores():
    """The cores this process may run on (the affinity mask where the OS has one)."""
    from ..kernels.workers import usable_cpus

    return usable_cpus()


IMPLEMENTATIONS = {
    "fastgrad": make_fastgrad,
    "fastgrad-eager": make_fastgrad_eager,
    "fastgrad-plain": make_fastgrad_plain,
    "fastgrad-scipy": make_fastgrad_scipy_blas,
    "numpy": make_numpy,
    "numba": make_numba,
    "torch": make_torch,
    "jax": make_jax,
}


def implementations(w: Workload):
    """name -> factory ``make(w, dtype)`` returning ``step(x, y) -> loss`` for workload ``w``."""
    return IMPLEMENTATIONS


def available(name):
    """Whether an implementation's library can be imported ("torch.nn.RNN" needs torch)."""
    lib = name.split(".")[0]
    if lib in ("torch", "jax"):
        try:
            __import__(lib)
        except ImportError:
            return False
    return True
