"""Forward mode: replay a recorded tape carrying k tangent directions at once (``fg.jvp``).

The JVP rules live in the op registry (fastgrad/ops/, each op's ``jvp``); ``RULES`` is a
read-only view of them keyed by op code. A rule maps the row's primal inputs ``xs``, their
tangents ``ts`` (each ``None`` for "no tangent", i.e. zero, or an array of shape
``(k, *x.shape)``), the primal output ``y`` and the row's decoded attributes to the output
tangent, shape ``(k, *y.shape)``. tests/test_jvp.py checks every rule against central finite
differences on the registry's own samples.

The replay is a NumPy interpreter over the tape rows, like transforms/reference.py (whose forward
it uses for primal values), with a leading tangent axis of size k. It suits what forward mode is
for here: the tape of one recurrent step is a handful of rows, replayed many times with a small
set of directions (Lyapunov exponents, Jacobian products). A ``SCAN`` row is replayed by running
its body T times with the tangents of the carries.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from ..core.errors import fail
from ..ops import CONTROL, TABLE, Op, fmt
from ..ops.nodes import FLOAT_NODE
from .reference import Reference
from ..runtime.tape import Tape
from ..frontend.modes import get_default_dtype
from ..frontend.tensor import Tensor, placeholder, real_array

RULES = MappingProxyType({op: d.jvp for op, d in TABLE.items()})


class _Replay(Reference):
    """Primal values (NumPy, as the reference interpreter) and k tangents per node, row by row;
    a loop runs as the reference runs it (``Reference._scan_forward``), its hooks extended to
    move tangents too."""

    def __init__(self, tape: Tape):
        super().__init__(tape)
        self.views = [self.node(v) for v in range(tape.n_nodes)]  # fixed views into the arenas
        self.rows = [self.row(r) for r in range(tape.n_rows)]  # (op definition, ins, attrs, out)
        self.tangents, self.k = {}, 0

    def run(self, tangents: dict, k: int, start=0, stop=None):
        """Forward rows [start, stop) computing values and tangents (dict node -> (k, *shape))."""
        self.tangents, self.k = tangents, k
        stop = len(self.rows) if stop is None else stop
        views, shapes, forward = self.views, self.t.shapes, self.forward_row
        r = start
        while r < stop:
            d, ins, a, out = self.rows[r]
            if d.family == CONTROL:  # a loop: SCAN_BEGIN skips to its SCAN row, which runs it
                if d.op == Op.SCAN_BEGIN:
                    r = a.scan_row
                    continue
                self._scan_forward(r, a)
                r += 1
                continue
            xs = [views[i] for i in ins]
            y = views[out]
            y[...] = forward(d, xs, a, shapes[out])
            ts = [tangents.get(i) for i in ins]
            if d.differentiable and any(t is not None for t in ts):
                tangents[out] = np.ascontiguousarray(d.jvp(xs, ts, y, a))
            else:
                tangents.pop(out, None)
            r += 1
        return tangents

    # a loop's step moves tangents beside the values
    def copy_carry(self, dst, src):
        super().copy_carry(dst, src)
        if src in self.tangents:
            self.tangents[dst] = self.tangents[src].copy()
        else:
            self.tangents.pop(dst, None)

    def load_step_input(self, a, t):
        super().load_step_input(a, t)
        txs = self.tangents.get(a.xs)
        if txs is not None:
            self.tangents[a.x_slot] = txs[:, t]

    def run_rows(self, start, stop):
        self.run(self.tangents, self.k, start, stop)

    def keep_step(self, r, a, t):
        pass  # no backward here: a long loop keeps nothing per step

    def begin_loop(self, a):
        self.stacked_tangents = {int(s): [] for _, s in a.stacked}

    def stack_output(self, body, stacked, t):
        super().stack_output(body, stacked, t)
        self.stacked_tangents[int(stacked)].append(self.tangents.get(int(body)))

    def finish_loop(self, a):
        for s, ts in self.stacked_tangents.items():
            if any(t is not None for t in ts):
                shape = self.t.shapes[s][1:]
                self.tangents[s] = np.stack(
                    [np.zeros((self.k,) + shape) if t is None else t for t in ts], axis=1)


def _as_tuple(x):
    return (tuple(x), False) if isinstance(x, (tuple, list)) else ((x,), True)


class Linearized:
    """``fn`` recorded once on a tape of input slots; each call replays it in forward mode.

    ``lin(primals, tangents)`` has the contract of :func:`jvp` but records nothing: new primal
    values are written into the slots and the rows are replayed (primal and tangents).
    The primals must keep the shapes they were recorded with. Python control flow in ``fn``
    that depends on values is frozen at record time (as in ``fg.compile``).
    """

    def __init__(self, fn, primals, dtype=None):
        if not callable(fn):
            raise fail("jvp", f"fn must be a function of tensors, got {type(fn).__name__}",
                       "pass e.g. lambda x: (x * x).sum()")
        prim, _ = _as_tuple(primals)
        arrays = [real_array("jvp", f"primal {i}", p) for i, p in enumerate(prim)]
        dtype = np.dtype(dtype or next((a.dtype for a in arrays if a.dtype.kind == "f"),
                                       get_default_dtype()))
        tape = Tape(dtype)
        slots = [placeholder(tape, a.astype(dtype) if a.dtype.kind == "f" else a,
                             label=f"input {i}") for i, a in enumerate(arrays)]
        out = fn(*slots)
        outs, self.single = _as_tuple(out)
        outs = [o if isinstance(o, Tensor) else Tensor(np.asarray(o)) for o in outs]
        taped = [o for o in outs if o._tape is not None]
        self.tape = taped[0].tape if taped else tape  # merges may have moved the graph
        for o in taped[1:]:
            if o.tape is not self.tape:
                raise fail("jvp", "the outputs were recorded on different graphs",
                           "return outputs computed from the inputs")
        self.slot_nodes = [s.node if s.tape is self.tape else -1 for s in slots]
        self.shapes = [a.shape for a in arrays]
        self.outs = outs
        self.replay = _Replay(self.tape)

    def __call__(self, primals, tangents):
        prim, _ = _as_tuple(primals)
        tans, _ = _as_tuple(tangents)
        if len(prim) != len(self.shapes) or len(tans) != len(prim):
            raise fail("jvp", f"got {len(prim)} primals and {len(tans)} tangents for a function "
                       f"recorded with {len(self.shapes)} inputs",
                       "pass one tangent per primal, in a tuple")
        ref = self.replay
        tangent_in, k, batched = {}, None, None
        for i, (p, t, shape, v) in enumerate(zip(prim, tans, self.shapes, self.slot_nodes)):
            p = np.asarray(p.numpy() if isinstance(p, Tensor) else p)
            t = None if t is None else real_array("jvp", f"tangent {i}", t).astype(np.float64)
            if p.shape != shape:
                raise fail("jvp", f"primal {i} has shape {fmt(p.shape)}, recorded as {fmt(shape)}",
                           "call with the shapes fn was linearized at (or call fg.jvp)")
            if t is not None:
                if t.shape == shape:
                    this = False
                elif t.shape[1:] == shape:
                    this = True
                else:
                    raise fail("jvp", f"tangent {i} has shape {fmt(t.shape)} for a primal of "
                               f"shape {fmt(shape)}", "give a tangent of the primal's shape, or "
                               "(k, *shape) for k directions at once")
                if batched is not None and this != batched:
                    raise fail("jvp", "some tangents are batched (k, *shape) and some are not",
                               "batch every tangent or none")
                batched = this
                t = t if this else t[None]
                if k is not None and t.shape[0] != k:
                    raise fail("jvp", f"tangents carry {k} and {t.shape[0]} directions",
                               "give every tangent the same leading size k")
                k = t.shape[0]
            if v >= 0:
                if ref.t.node_kind.a[v] == FLOAT_NODE:
                    ref.node(v)[...] = p
                    if t is not None:
                        tangent_in[v] = t
                else:
                    ref.node(v)[...] = p.astype(np.int64)
        k = 1 if k is None else k
        with np.errstate(all="ignore"):
            tangents = self.replay.run(tangent_in, k)
        ys, dys = [], []
        for o in self.outs:
            if o._tape is None:
                y, dy = np.array(o.numpy()), np.zeros((k,) + o.shape)
            else:
                y = np.array(ref.node(o.node))
                dy = tangents.get(o.node)
                dy = np.zeros((k,) + o.shape) if dy is None else np.array(dy)
            ys.append(y)
            dys.append(dy if batched else dy[0])
        if self.single:
            return ys[0], dys[0]
        return tuple(ys), tuple(dys)


def linearize(fn, *primals):
    """Record ``fn(*primals)`` once and return a :class:`Linearized` to replay in forward mode.

    >>> import fastgrad as fg, numpy as np
    >>> lin = fg.linearize(lambda x: (x * x).sum(), np.zeros(3))
    >>> y, dy = lin((np.array([1.0, 2.0, 3.0]),), (np.ones(3),))
    >>> float(y), float(dy)
    (14.0, 12.0)
    """
    return Linearized(fn, primals)


def jvp(fn, primals, tangents):
    """Forward-mode derivative of ``fn`` at ``primals`` along ``tangents``, as ``jax.jvp``.

    fn:        maps tensors to a tensor or a tuple of tensors (recorded once on a tape).
    primals:   tuple of arrays/tensors, the point; shapes s_i.
    tangents:  tuple (one per primal) of arrays of shape s_i (one direction), or all of shape
               (k, *s_i) (k directions at once); None for a zero tangent.
    Returns ``(out, tangent_out)``: NumPy arrays; tangent_out has the output's shape, or
    (k, *out.shape) for batched tangents; tuples if ``fn`` returns a tuple.

    >>> import fastgrad as fg, numpy as np
    >>> out, t = fg.jvp(lambda x, y: x * y.tanh(), (np.array([2.0]), np.array([0.0])),
    ...                 (np.array([1.0]), np.array([1.0])))
    >>> out, t          # d(x tanh y) = tanh(y) dx + x (1 - tanh^2 y) dy
    (array([0.]), array([2.]))
    >>> W = np.diag([2.0, 3.0])
    >>> _, J = fg.jvp(lambda h: h @ W, (np.ones(2),), (np.eye(2),))   # k = 2 directions
    >>> J
    array([[2., 0.],
           [0., 3.]])
    """
    prim, _ = _as_tuple(primals)
    return Linearized(fn, prim)(prim, tangents)


__all__ = ["RULES", "Linearized", "jvp", "linearize"]
