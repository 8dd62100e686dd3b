"""Recurrence benchmark: one training step of an Elman RNN (hidden 64, input 8) with a linear
readout of the last state and an MSE loss, by BPTT over T steps; batch 1 and 16; T 1,000 and
10,000. Results are quoted in microseconds per unrolled step.

References: a fused hand-written Numba BPTT with small-matrix loops (an honest, tuned
baseline), hand-written NumPy, and PyTorch (eager autograd over a Python loop, and
torch.nn.RNN) and JAX (jit + lax.scan) when installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

import fastgrad as fg
from bench.workloads import jax_sgd_step, torch_dtype

H, I = 64, 8


@dataclass
class RNNWorkload:
    T: int
    batch: int
    lr: float = 1e-3

    @property
    def name(self):
        return f"rnn-h64-T{self.T}-b{self.batch}"


RNN_WORKLOADS = [RNNWorkload(T, B) for B in (1, 16) for T in (1000, 10_000)]


def data(w, dtype, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(w.T, w.batch, I)).astype(dtype)
    y = rng.normal(size=(w.batch, 1)).astype(dtype)
    return xs, y


def weights(dtype, seed=1):
    rnn = fg.nn.RNN(I, H, seed=seed)
    head = fg.nn.Linear(H, 1, seed=seed + 1)
    return [p.numpy().astype(dtype) for p in rnn.parameters() + head.parameters()]


def make_fastgrad(w, dtype):
    rnn = fg.nn.RNN(I, H, seed=1, dtype=dtype, stack_outputs=False)
    head = fg.nn.Linear(H, 1, seed=2, dtype=dtype)
    opt = fg.optim.SGD(rnn.parameters() + head.parameters(), lr=w.lr)

    def loss(xs, y):
        _, h = rnn(xs)
        return fg.mse_loss(head(h), y)

    return fg.compile(loss, optimizer=opt)


@numba.njit(cache=True, error_model="numpy")
def _numba_bptt(Wih, Whh, bih, bhh, Wo, bo, xs, y, hs, lr):
    T, B, In = xs.shape
    Hh = Whh.shape[0]
    for b in range(B):
        for j in range(Hh):
            hs[0, b, j] = 0.0
    for t in range(T):
        for b in range(B):
            for j in range(Hh):
                s = bih[j] + bhh[j]
                for i in range(In):
                    s += xs[t, b, i] * Wih[j, i]
                for k in range(Hh):
                    s += hs[t, b, k] * Whh[j, k]
                hs[t + 1, b, j] = np.tanh(s)
    loss = 0.0
    gh = np.zeros((B, Hh), Whh.dtype)
    gWo = np.zeros_like(Wo)
    gbo = 0.0
    for b in range(B):
        o = bo[0]
        for j in range(Hh):
            o += hs[T, b, j] * Wo[0, j]
        d = o - y[b, 0]
        loss += d * d / B
        g = 2.0 * d / B
        gbo += g
        for j in range(Hh):
            gWo[0, j] += g * hs[T, b, j]
            gh[b, j] = g * Wo[0, j]
    gWih = np.zeros_like(Wih)
    gWhh = np.zeros_like(Whh)
    gb = np.zeros_like(bih)
    gz = np.zeros((B, Hh), Whh.dtype)
    for t in range(T - 1, -1, -1):
        for b in range(B):
            for j in range(Hh):
                h = hs[t + 1, b, j]
                gz[b, j] = gh[b, j] * (1.0 - h * h)
        for b in range(B):
            for j in range(Hh):
                g = gz[b, j]
                gb[j] += g
                for i in range(In):
                    gWih[j, i] += g * xs[t, b, i]
                for k in range(Hh):
                    gWhh[j, k] += g * hs[t, b, k]
            for k in range(Hh):
                s = 0.0
                for j in range(Hh):
                    s += gz[b, j] * Whh[j, k]
                gh[b, k] = s
    Wih -= lr * gWih
    Whh -= lr * gWhh
    bih -= lr * gb
    bhh -= lr * gb
    Wo -= lr * gWo
    bo -= lr * gbo
    return loss


def make_numba(w, dtype):
    ps = weights(dtype)
    hs = np.zeros((w.T + 1, w.batch, H), dtype)
    return lambda xs, y: _numba_bptt(*ps, xs, y, hs, w.lr)


def make_numpy(w, dtype):
    Wih, Whh, bih, bhh, Wo, bo = weights(dtype)

    def step(xs, y):
        T = xs.shape[0]
        hs = [np.zeros((xs.shape[1], H), dtype)]
        proj = xs @ Wih.T + (bih + bhh)
        for t in range(T):
            hs.append(np.tanh(proj[t] + hs[-1] @ Whh.T))
        out = hs[-1] @ Wo.T + bo
        d = out - y
        loss = float((d * d).mean())
        g = 2 * d / d.size
        gWo, gbo = g.T @ hs[-1], g.sum(axis=0)
        gh = g @ Wo
        gWhh = np.zeros_like(Whh)
        gproj = np.empty_like(proj)
        for t in range(T - 1, -1, -1):
            gz = gh * (1 - hs[t + 1] ** 2)
            gproj[t] = gz
            gWhh += gz.T @ hs[t]
            gh = gz @ Whh
        gWih = gproj.reshape(-1, H).T @ xs.reshape(-1, I)
        gb = gproj.sum(axis=(0, 1))
        for p, gp in ((Wih, gWih), (Whh, gWhh), (bih, gb), (bhh, gb), (Wo, gWo), (bo, gbo)):
            p -= w.lr * gp
        return loss

    return step


def make_torch_eager(w, dtype):
    import torch

    tdt = torch_dtype(dtype)
    ps = [torch.tensor(p, dtype=tdt, requires_grad=True) for p in weights(dtype)]
    opt = torch.optim.SGD(ps, lr=w.lr)

    def step(xs, y):
        Wih, Whh, bih, bhh, Wo, bo = ps
        x = torch.from_numpy(xs)
        h = torch.zeros(xs.shape[1], H, dtype=tdt)
        for t in range(xs.shape[0]):
            h = torch.tanh(x[t] @ Wih.T + bih + h @ Whh.T + bhh)
        loss = torch.nn.functional.mse_loss(h @ Wo.T + bo, torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def make_torch_rnn(w, dtype):
    import torch

    tdt = torch_dtype(dtype)
    rnn = torch.nn.RNN(I, H).to(tdt)
    head = torch.nn.Linear(H, 1).to(tdt)
    with torch.no_grad():
        for p, v in zip(list(rnn.parameters()) + list(head.parameters()), weights(dtype)):
            p.copy_(torch.from_numpy(v))
    opt = torch.optim.SGD(list(rnn.parameters()) + list(head.parameters()), lr=w.lr)

    def step(xs, y):
        _, h = rnn(torch.from_numpy(xs))
        loss = torch.nn.functional.mse_loss(head(h[0]), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def make_jax(w, dtype):
    import jax
    import jax.numpy as jnp

    if np.dtype(dtype) == np.float64:
        jax.config.update("jax_enable_x64", True)
    params = [jnp.asarray(p) for p in weights(dtype)]

    def loss_fn(ps, xs, y):
        Wih, Whh, bih, bhh, Wo, bo = ps

        def cell(h, x):
            return jnp.tanh(x @ Wih.T + bih + h @ Whh.T + bhh), None

        h, _ = jax.lax.scan(cell, jnp.zeros((xs.shape[1], H), xs.dtype), xs)
        return jnp.mean((h @ Wo.T + bo - y) ** 2)

    return jax_sgd_step(loss_fn, params, w.lr)


RNN_IMPLEMENTATIONS = {
    "fastgrad": make_fastgrad,
    "numba": make_numba,
    "numpy": make_numpy,
    "torch": make_torch_eager,
    "torch.nn.RNN": make_torch_rnn,
    "jax": make_jax,
}


def run(workloads=None, dtypes=("float32", "float64"), repeat=5, log=print):
    from bench.workloads import available, time_step

    rows = []
    for w in workloads or RNN_WORKLOADS:
        for dt in dtypes:
            dtype = np.dtype(dt)
            xs, y = data(w, dtype)
            times = {}
            for name, make in RNN_IMPLEMENTATIONS.items():
                if not available(name.split(".")[0]):
                    continue
                times[name] = time_step(make(w, dtype), xs, y, repeat=repeat, min_time=0.05)
            base = times["fastgrad"]
            for name, t in times.items():
                rows.append(dict(workload=w.name, dtype=dt, impl=name, median_us=t * 1e6,
                                 us_per_step=t * 1e6 / w.T, ratio_to_fastgrad=t / base))
            log(f"{w.name} {dt}: " + ", ".join(
                f"{k} {v * 1e6 / w.T:.2f}us/step ({v / base:.2f}x)" for k, v in times.items()))
    return rows
