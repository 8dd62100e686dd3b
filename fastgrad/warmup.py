"""``fastgrad warmup``: compile kernels ahead into the kernel cache (for container images and CI
caches; docs/kernel-cache.md), by running a tiny program of each entry family or by compiling
named ops' kernels.

>>> from fastgrad.warmup import FAMILIES
>>> sorted(FAMILIES)
['eager', 'fit', 'scan', 'step']
"""

from __future__ import annotations

import time

import numpy as np

from .core.errors import fail
from .frontend.functional import cross_entropy
from .frontend.tensor import tensor
from .kernels import dispatch
from .kernels.dispatch import CODES
from .ops import Op
from .runtime.kernel_cache import REPORTER
from .training import nn, optim
from .training.compile import compile as compile_step
from .training.fit import fit
from .transforms.scan import Binomial

__all__ = ["ALL_OPS", "DTYPES", "FAMILIES", "op_names", "warmup"]

# What ``fastgrad warmup --ops`` takes: an entry family (its small entry kernels and the ops a
# tiny program of it uses), the name of an op (its forward and VJP kernels), or "all-ops".
FAMILIES = {
    "eager": "x.backward() and opt.step(): the forward and backward replay of a recorded tape "
             "(fg.scan loops run inside it) and the optimizer update",
    "step": "fg.compile(loss_fn, optimizer=opt): the compiled training step, for an input "
            "of rows (batch, features) and for any other (a sequence (T, batch, features))",
    "fit": "fg.fit: the native epoch loop",
    "scan": "fg.scan loops (fg.nn.RNN, LSTM, GRU, checkpointed or not), eager and in a "
            "compiled step: the kernels above that they run in",
}
DTYPES = ("float32", "float64")
ALL_OPS = "all-ops"


def op_names() -> tuple:
    """The names of the ops with kernels (``matmul``, ``tanh``, ...), in op-code order."""
    return tuple(Op(code).name.lower() for code in CODES)


def _warm_eager(dtype):
    x, y, z = (tensor(np.array([v], dtype), requires_grad=True) for v in (2.0, -3.0, 4.0))
    ((x + y) * z).sum().backward()
    model = nn.MLP([2, 3, 2], seed=0, dtype=dtype)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cross_entropy(model(np.ones((2, 2), dtype)), np.array([0, 1])).backward()
    opt.step()


def _tiny_step(dtype):
    model = nn.MLP([2, 3, 2], seed=0, dtype=dtype)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return compile_step(lambda xb, yb: cross_entropy(model(xb), yb), optimizer=opt)


def _tiny_sequence_step(dtype):
    rnn = nn.RNN(2, 3, stack_outputs=False, dtype=dtype)
    opt = optim.Adam(rnn.parameters(), lr=1e-3)

    def loss(xs):
        _, h = rnn(xs)
        return (h * h).sum()

    # a (T, batch, features) input reaches the step kernel flattened: its other specialisation
    compile_step(loss, optimizer=opt)(np.ones((4, 1, 2), dtype))


def _warm_step(dtype):
    # the step kernel is specialised on the input it reads in place: 2-D (a batch of rows)
    # or 1-D (anything else, flattened)
    _tiny_step(dtype)(np.ones((2, 2), dtype), np.array([0, 1]))
    _tiny_sequence_step(dtype)


def _warm_fit(dtype):
    fit(_tiny_step(dtype), np.ones((4, 2), dtype), np.array([0, 1, 1, 0]),
        batch_size=2, drop_last=True, progress=False)


def _warm_scan(dtype):
    rnn = nn.RNN(2, 3, checkpoint=Binomial(slots=2), stack_outputs=False, dtype=dtype)
    _, h = rnn(np.ones((4, 1, 2), dtype))
    (h * h).sum().backward()
    _tiny_sequence_step(dtype)


_WARMERS = {"eager": _warm_eager, "step": _warm_step, "fit": _warm_fit, "scan": _warm_scan}


def _names(values, known, what, option):
    """Split ``values`` (names, or comma-separated lists of them) and check each is known."""
    names = []
    if isinstance(values, str):  # one name or "a,b": not its characters
        values = [values]
    for v in values:
        for name in str(v).split(","):
            name = name.strip()
            if not name:
                continue
            if name not in known:
                raise fail("warmup", f"unknown {what} {name!r}",
                           f"{option} takes {', '.join(known)}")
            if name not in names:
                names.append(name)
    return names


def _compiled_summary(kernels) -> str:
    """What a warmup row compiled, in one line: the entry kernels by name (a second
    specialisation counted, not repeated), then the ops whose kernels it compiled."""
    if not kernels:
        return "already cached"
    names = set(op_names()) | set(dispatch.KERNEL_NAMES.values())  # kernels not one op's
    op_kernels = [k for k in kernels if k.rsplit("_", 1)[0] in names]
    entries = [k for k in kernels if k not in op_kernels]
    parts = [", ".join(f"{k} (x{entries.count(k)})" if entries.count(k) > 1 else k
                       for k in dict.fromkeys(entries))] if entries else []
    ops = list(dict.fromkeys(k.rsplit("_", 1)[0] for k in op_kernels))
    if ops:
        parts.append(f"ops {', '.join(ops)} ({len(op_kernels)} kernels)")
    return "compiled " + "; ".join(parts) if parts else "compiled the dispatch table"


def warmup(dtypes=DTYPES, ops=tuple(FAMILIES) + (ALL_OPS,), report=print):
    """Compile the kernels of ``ops`` for each of ``dtypes`` into the kernel cache, ahead of
    their first use. ``ops`` names entry families (see ``FAMILIES``), ops (``"matmul"``,
    ``"relu"``, ...: their forward and VJP kernels) or ``"all-ops"``. Returns one row per
    (dtype, name): ``{"dtype", "family", "seconds", "compiled": [kernels compiled]}``;
    ``compiled`` is empty when the cache already had them.

    ``report(line)`` receives a line per row (``print`` by default, None for silence).

    >>> from fastgrad.warmup import warmup
    >>> rows = warmup(["float64"], ["eager", "tanh"], report=None)  # doctest: +SKIP
    """
    names = op_names()
    dtypes = _names(dtypes, DTYPES, "dtype", "--dtype")
    ops = _names(ops, tuple(FAMILIES) + (ALL_OPS,) + names, "op family or op", "--ops")
    if not dtypes or not ops:
        raise fail("warmup", "nothing to compile (no dtype or no op family given)",
                   f"name at least one dtype ({', '.join(DTYPES)}) and one family "
                   f"({', '.join(FAMILIES)}), op name or {ALL_OPS}")
    rows = []
    for dtype in dtypes:
        for family in ops:
            before = len(REPORTER.compiled)
            start = time.perf_counter()
            if family in FAMILIES:
                _WARMERS[family](np.dtype(dtype))
            else:
                wanted = names if family == ALL_OPS else (family,)
                dispatch.table(dtype).ensure([int(Op[n.upper()]) for n in wanted])
            seconds = time.perf_counter() - start
            entries = [c.kernel for c in REPORTER.compiled[before:]
                       if c.depth == 0 and not c.failed]
            rows.append({"dtype": dtype, "family": family, "seconds": seconds,
                         "compiled": entries})
            if report is not None:
                report(f"  {dtype:<8} {family:<7} {_compiled_summary(entries)} "
                       f"({seconds:.1f} s)")
    return rows
