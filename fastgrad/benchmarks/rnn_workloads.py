"""Recurrence benchmark: one training step of an Elman RNN (hidden 64, input 8) with a linear
readout of the last state and an MSE loss, by BPTT over T steps; batch 1 and 16; T 1,000 and
10,000. Results are quoted in microseconds per unrolled step. On request (by name), the same
step with an LSTM or a GRU layer (input 32, hidden 64 and 128, T = 100) against PyTorch's.

References: a fused hand-written Numba BPTT with small-matrix loops (an honest, tuned
baseline), hand-written NumPy, and PyTorch (eager autograd over a Python loop, and
torch.nn.RNN) and JAX (jit + lax.scan) when installed.

The long unrolls (T = 10^6 and 10^7, batch 1, float32) run fastgrad alone with
``checkpoint="sqrt"`` and ``stack_outputs=False``: one step, no repeats (a step takes seconds to
minutes). They run only when asked for by name (``fastgrad bench --workload 'long-*'``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

import fastgrad as fg

from .workloads import available, jax_sgd_step, torch_dtype, torch_sgd_step  # noqa: F401
# (available: re-exported for the bench suites)

__all__ = ["GATE_IMPLEMENTATIONS", "GATE_INPUTS", "GATE_WORKLOADS", "H", "I",
           "QUICK_GATE_WORKLOADS", "QUICK_RNN_WORKLOADS", "RNNWorkload", "RNN_IMPLEMENTATIONS",
           "RNN_LONG_WORKLOADS", "RNN_WORKLOADS", "available", "data", "implementations",
           "make_fastgrad", "make_fastgrad_gate", "make_fastgrad_plain", "make_jax", "make_numba",
           "make_numpy", "make_torch_eager", "make_torch_gate", "make_torch_rnn", "weights"]

H, I = 64, 8


@dataclass
class RNNWorkload:
    T: int
    batch: int
    lr: float = 1e-3
    long: bool = False  # checkpointed fastgrad only, one timed step
    quick: bool = False  # a smoke-test size
    cell: str = "rnn"  # "rnn" (Elman, tanh), "lstm" or "gru" (fg.nn.LSTM / fg.nn.GRU)
    hidden: int = H
    inputs: int = I

    kind = "rnn"

    @property
    def name(self):
        prefix = ("quick-" if self.quick else "") + ("long-" if self.long else "")
        return f"{prefix}{self.cell}-h{self.hidden}-T{self.T}-b{self.batch}"

    @property
    def steps(self):
        return self.T

    @property
    def repeat(self):
        return 1 if self.long else 5

    @property
    def min_time(self):
        return 0.0 if self.long else 0.05

    @property
    def warmup(self):
        return 0 if self.long else 2

    @property
    def dtypes(self):
        return ("float32",) if self.long else ("float32", "float64")

    def tiny(self):
        """A short unroll on the same code paths (see ``Workload.tiny``)."""
        if self.cell != "rnn":
            return _quick_gate(self.cell)
        return RNNWorkload(50, 2, long=self.long, quick=True)


RNN_WORKLOADS = [RNNWorkload(T, B) for B in (1, 16) for T in (1000, 10_000)]
RNN_LONG_WORKLOADS = [RNNWorkload(T, 1, long=True) for T in (1_000_000, 10_000_000)]
QUICK_RNN_WORKLOADS = [RNNWorkload(50, 2, quick=True)]

# LSTM and GRU steps (input 32, T = 100), run when asked for by name ('lstm-*', 'gru-*'):
# fg.nn.LSTM / fg.nn.GRU against torch.nn.LSTM / torch.nn.GRU with the same weights.
GATE_INPUTS = 32


def _quick_gate(cell):
    return RNNWorkload(20, 2, quick=True, cell=cell, hidden=16, inputs=GATE_INPUTS)


GATE_WORKLOADS = [RNNWorkload(100, B, cell=cell, hidden=h, inputs=GATE_INPUTS)
                  for cell in ("lstm", "gru") for h in (64, 128) for B in (1, 16)]
QUICK_GATE_WORKLOADS = [_quick_gate(cell) for cell in ("lstm", "gru")]


def data(w, dtype, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(w.T, w.batch, w.inputs)).astype(dtype)
    y = rng.normal(size=(w.batch, 1)).astype(dtype)
    return xs, y


def weights(dtype, seed=1):
    rnn = fg.nn.RNN(I, H, seed=seed)
    head = fg.nn.Linear(H, 1, seed=seed + 1)
    return [p.numpy().astype(dtype) for p in rnn.parameters() + head.parameters()]


def make_fastgrad(w, dtype):
    checkpoint = "sqrt" if w.long else None
    rnn = fg.nn.RNN(I, H, seed=1, dtype=dtype, stack_outputs=False, checkpoint=checkpoint)
    head = fg.nn.Linear(H, 1, seed=2, dtype=dtype)
    opt = fg.optim.SGD(rnn.parameters() + head.parameters(), lr=w.lr)

    def loss(xs, y):
        _, h = rnn(xs)
        return fg.mse_loss(head(h), y)

    return fg.compile(loss, optimizer=opt)


def make_fastgrad_plain(w, dtype):
    """The same Elman cell written with plain ops in ``fg.scan``, as the PyTorch and JAX
    references spell it: tanh(x_t @ W_ih.T + b_ih + h @ W_hh.T + b_hh). Same weights, same
    compiled SGD step; fg.nn.RNN records the fused single-cell row instead (issue "Native speed
    for the code people write")."""
    params = [fg.tensor(p, requires_grad=True) for p in weights(dtype)]
    Wih, Whh, bih, bhh, Wo, bo = params
    opt = fg.optim.SGD(params, lr=w.lr)

    def cell(h, x):
        return (x @ Wih.T + bih + h @ Whh.T + bhh).tanh()

    def loss(xs, y):
        h = fg.scan(cell, fg.zeros(xs.shape[1], H, dtype=dtype), xs)
        return fg.mse_loss(h @ Wo.T + bo, y)

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

    def loss_of(x, y):
        Wih, Whh, bih, bhh, Wo, bo = ps
        h = torch.zeros(x.shape[1], H, dtype=tdt)
        for t in range(x.shape[0]):
            h = torch.tanh(x[t] @ Wih.T + bih + h @ Whh.T + bhh)
        return torch.nn.functional.mse_loss(h @ Wo.T + bo, y)

    return torch_sgd_step(ps, w.lr, loss_of)


def make_torch_rnn(w, dtype):
    import torch

    tdt = torch_dtype(dtype)
    rnn = torch.nn.RNN(I, H).to(tdt)
    head = torch.nn.Linear(H, 1).to(tdt)
    with torch.no_grad():
        for p, v in zip(list(rnn.parameters()) + list(head.parameters()), weights(dtype)):
            p.copy_(torch.from_numpy(v))

    def loss_of(x, y):
        _, h = rnn(x)
        return torch.nn.functional.mse_loss(head(h[0]), y)

    return torch_sgd_step(list(rnn.parameters()) + list(head.parameters()), w.lr, loss_of)


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


def _gate_layer(w, dtype, seed=1):
    layer = {"lstm": fg.nn.LSTM, "gru": fg.nn.GRU}[w.cell]
    return layer(w.inputs, w.hidden, seed=seed, dtype=dtype, stack_outputs=False)


def make_fastgrad_gate(w, dtype):
    """fg.nn.LSTM / fg.nn.GRU (plain ops in the scan body) with a linear readout of the last
    state, MSE, one compiled SGD step."""
    rnn = _gate_layer(w, dtype)
    head = fg.nn.Linear(w.hidden, 1, seed=2, dtype=dtype)
    opt = fg.optim.SGD(rnn.parameters() + head.parameters(), lr=w.lr)

    def loss(xs, y):
        _, final = rnn(xs)
        h = final[0] if isinstance(final, tuple) else final
        return fg.mse_loss(head(h), y)

    return fg.compile(loss, optimizer=opt)


def make_torch_gate(w, dtype):
    """torch.nn.LSTM / torch.nn.GRU with fastgrad's weights (the same layout), the same readout."""
    import torch

    tdt = torch_dtype(dtype)
    layer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[w.cell](w.inputs, w.hidden).to(tdt)
    head = torch.nn.Linear(w.hidden, 1).to(tdt)
    ours = _gate_layer(w, dtype).parameters() + fg.nn.Linear(w.hidden, 1, seed=2,
                                                             dtype=dtype).parameters()
    params = list(layer.parameters()) + list(head.parameters())
    with torch.no_grad():
        for p, v in zip(params, ours):
            p.copy_(torch.from_numpy(v.numpy()))

    def loss_of(x, y):
        _, final = layer(x)
        h = final[0] if isinstance(final, tuple) else final
        return torch.nn.functional.mse_loss(head(h[0]), y)

    return torch_sgd_step(params, w.lr, loss_of)


GATE_IMPLEMENTATIONS = {
    "fastgrad": make_fastgrad_gate,
    "torch.nn.LSTM": make_torch_gate,
    "torch.nn.GRU": make_torch_gate,
}


RNN_IMPLEMENTATIONS = {
    "fastgrad": make_fastgrad,
    "fastgrad-plain": make_fastgrad_plain,
    "numba": make_numba,
    "numpy": make_numpy,
    "torch": make_torch_eager,
    "torch.nn.RNN": make_torch_rnn,
    "jax": make_jax,
}


def implementations(w: RNNWorkload):
    """name -> factory ``make(w, dtype)`` returning ``step(xs, y) -> loss`` for workload ``w``."""
    if w.cell != "rnn":
        return {k: v for k, v in GATE_IMPLEMENTATIONS.items()
                if k == "fastgrad" or k.lower().endswith(w.cell)}
    return {"fastgrad": make_fastgrad} if w.long else RNN_IMPLEMENTATIONS
