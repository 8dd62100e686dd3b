"""The benchmark workloads (from the training issue) and the implementations timed on them.

Each workload is one training step (forward + backward + SGD update) of an MLP. Every
implementation starts from the same weights and data. Peers (PyTorch, JAX) are used only when
installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import fastgrad as fg
from fastgrad.timing import median_time
from bench.baselines import NumbaStep, numpy_step


@dataclass
class Workload:
    name: str
    sizes: list
    act: str
    loss: str  # "mse" or "ce"
    batch: int
    lr: float = 0.01


MLP_WORKLOADS = [
    Workload("tiny-2-16-16-1-tanh-b100", [2, 16, 16, 1], "tanh", "mse", 100),
    Workload("mlp-784-128-10-relu-b64", [784, 128, 10], "relu", "ce", 64),
    Workload("mlp-784-128-10-relu-b1024", [784, 128, 10], "relu", "ce", 1024),
    Workload("deep-64-8x64-10-sigmoid-b32", [64] + [64] * 8 + [10], "sigmoid", "ce", 32),
]


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
    opt = torch.optim.SGD(model.parameters(), lr=w.lr)
    lossf = torch.nn.functional.mse_loss if w.loss == "mse" else torch.nn.functional.cross_entropy

    def step(x, y):
        opt.zero_grad()
        out = lossf(model(torch.from_numpy(x)), torch.from_numpy(y))
        out.backward()
        opt.step()
        return out.item()

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
    """The torch dtype for a NumPy float dtype (and 2 threads, as the machine has 2 cores)."""
    import torch

    torch.set_num_threads(2)
    return torch.float32 if np.dtype(dtype) == np.float32 else torch.float64


IMPLEMENTATIONS = {
    "fastgrad": make_fastgrad,
    "fastgrad-eager": make_fastgrad_eager,
    "numpy": make_numpy,
    "numba": make_numba,
    "torch": make_torch,
    "jax": make_jax,
}


def available(name):
    if name == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            return False
    if name == "jax":
        try:
            import jax  # noqa: F401
        except ImportError:
            return False
    return True


def time_step(step, x, y, repeat=7, min_time=0.2):
    """Median seconds per step (fastgrad.timing.median_time, shared with ``fastgrad demo``)."""
    return median_time(step, x, y, repeat=repeat, min_time=min_time)


def run(workloads=None, dtypes=("float32", "float64"), impls=None, repeat=7, min_time=0.2,
        log=print):
    """Time every implementation on every workload; returns rows with ratios to fastgrad."""
    rows = []
    for w in workloads or MLP_WORKLOADS:
        for dt in dtypes:
            dtype = np.dtype(dt)
            x, y = data(w, dtype)
            times = {}
            for name in impls or IMPLEMENTATIONS:
                if not available(name):
                    continue
                step = IMPLEMENTATIONS[name](w, dtype)
                times[name] = time_step(step, x, y, repeat, min_time)
            base = times["fastgrad"]
            for name, t in times.items():
                rows.append(dict(workload=w.name, dtype=dt, impl=name, median_us=t * 1e6,
                                 ratio_to_fastgrad=t / base))
            log(f"{w.name} {dt}: " + ", ".join(
                f"{k} {v * 1e6:.1f}us ({v / base:.2f}x)" for k, v in times.items()))
    return rows
