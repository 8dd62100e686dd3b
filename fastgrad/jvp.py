"""Forward mode: replay a recorded tape carrying k tangent directions at once (``fg.jvp``).

``RULES`` is the one table of JVP rules, keyed by op code, one entry per op in the op table
(tests/test_jvp.py checks that and checks each rule against central finite differences on the
op table's own samples). A rule maps the row's primal inputs ``xs``, their tangents ``ts`` (each
``None`` for "no tangent", i.e. zero, or an array of shape ``(k, *x.shape)``), the primal output
``y`` and the row's attributes to the output tangent, shape ``(k, *y.shape)``.

Elementwise rules reuse the op table's ``np_vjp``: an elementwise op's Jacobian is diagonal, so
its transpose is itself and ``vjp(g=dx)`` *is* the JVP. The local derivative of such an op is
thus written once, in fastgrad/ops.py.

The replay is a NumPy interpreter over the tape rows, like fastgrad/reference.py (whose forward
it uses for primal values), with a leading tangent axis of size k. It suits what forward mode is
for here: the tape of one recurrent step is a handful of rows, replayed many times with a small
set of directions (Lyapunov exponents, Jacobian products). A ``SCAN`` row is replayed by running
its body T times with the tangents of the carries.
"""

from __future__ import annotations

import numpy as np

from .errors import fail
from .opcodes import BINARY, UNARY, Op
from .ops import TABLE, fmt
from .reference import Reference, _strided_index
from .tape import Tape
from .tensor import Tensor, get_default_dtype, placeholder, real_array


# ----------------------------------------------------------------------------- helpers
def _lift(t, nd):
    """A tangent (k, *s) with 1-axes inserted after k so that s is right-aligned to nd axes."""
    k, s = t.shape[0], t.shape[1:]
    return t.reshape((k,) + (1,) * (nd - len(s)) + s)


def _prim(x, nd):
    """A primal of shape s as (1, ..., 1, *s): nd + 1 axes, to broadcast against tangents."""
    return x.reshape((1,) * (nd + 1 - x.ndim) + x.shape)


def _k(ts):
    return next(t.shape[0] for t in ts if t is not None)


# ----------------------------------------------------------------------------- the rules
def _elementwise_unary(op):
    vjp = TABLE[op].np_vjp

    def rule(xs, ts, y, ip, fp):
        return vjp(xs[0], y, ts[0], fp[0], fp[1])  # diagonal Jacobian: J^T dx == J dx

    return rule


def _elementwise_binary(op):
    vjp = TABLE[op].np_vjp

    def rule(xs, ts, y, ip, fp):
        nd = y.ndim
        a, b, yy = _prim(xs[0], nd), _prim(xs[1], nd), _prim(y, nd)
        out = 0
        if ts[0] is not None:
            out = out + vjp(a, b, yy, _lift(ts[0], nd))[0]
        if ts[1] is not None:
            out = out + vjp(a, b, yy, _lift(ts[1], nd))[1]
        return np.broadcast_to(out, (_k(ts),) + y.shape)

    return rule


def _zero(xs, ts, y, ip, fp):
    """Piecewise-constant outputs (comparisons): the tangent is zero."""
    return np.zeros((_k(ts),) + y.shape)


def _where(xs, ts, y, ip, fp):
    nd, k = y.ndim, _k(ts)
    c = _prim(xs[0], nd) != 0
    a = _lift(ts[1], nd) if ts[1] is not None else 0.0
    b = _lift(ts[2], nd) if ts[2] is not None else 0.0
    return np.broadcast_to(np.where(c, a, b), (k,) + y.shape)


def _three(t, ip):
    return t.reshape(t.shape[0], int(ip[0]), int(ip[1]), int(ip[2]))


def _sum(xs, ts, y, ip, fp):
    return _three(ts[0], ip).sum(axis=2).reshape((-1,) + y.shape)


def _max(xs, ts, y, ip, fp):
    outer, n, inner = (int(v) for v in ip[:3])
    x3 = xs[0].reshape(outer, n, inner)
    first = np.argmax(x3 == y.reshape(outer, 1, inner), axis=1)  # the VJP's tie rule
    t3 = _three(ts[0], ip)
    picked = np.take_along_axis(t3, first[None, :, None, :], axis=2)
    return picked.reshape((-1,) + y.shape)


def _softmax(xs, ts, y, ip, fp):
    y3, t3 = _three(y[None], ip), _three(ts[0], ip)
    return (y3 * (t3 - (y3 * t3).sum(axis=2, keepdims=True))).reshape((-1,) + y.shape)


def _log_softmax(xs, ts, y, ip, fp):
    p3, t3 = np.exp(_three(y[None], ip)), _three(ts[0], ip)
    return (t3 - (p3 * t3).sum(axis=2, keepdims=True)).reshape((-1,) + y.shape)


def _matmul(xs, ts, y, ip, fp):
    nd = y.ndim
    a, b = _prim(xs[0], nd), _prim(xs[1], nd)
    tb = None if ts[1] is None else _lift(ts[1], nd)
    if ip[4]:  # trans_b: B is stored (n, k) and used transposed
        b = np.swapaxes(b, -1, -2)
        tb = None if tb is None else np.swapaxes(tb, -1, -2)
    out = 0
    if ts[0] is not None:
        out = out + np.matmul(_lift(ts[0], nd), b)
    if tb is not None:
        out = out + np.matmul(a, tb)
    return np.broadcast_to(out, (_k(ts),) + y.shape)


def _linear(xs, ts, y, ip, fp):
    """y = x @ W.T + c: ty = tx @ W.T + x @ tW.T + tc, c a bias (n,) or of y's shape."""
    x, w = xs[0], xs[1]
    out = 0
    if ts[0] is not None:
        out = out + ts[0] @ w.T
    if ts[1] is not None:
        out = out + np.einsum("...i,kni->k...n", x, ts[1])
    if ts[2] is not None:
        out = out + (ts[2] if ts[2].shape[1:] == y.shape else _lift(ts[2], y.ndim))
    return np.broadcast_to(out, (_k(ts),) + y.shape)


def _linear_act(xs, ts, y, ip, fp):
    """y = act(z), z = x @ W.T + c: ty = act'(z) tz, with tz linear's tangent and the slope
    from the activation's own (diagonal) VJP rule."""
    z = xs[0] @ xs[1].T + xs[2]
    return TABLE[Op(int(ip[7]))].np_vjp(z[None], y[None], _linear(xs, ts, y, ip, fp), 0.0, 0.0)


def _reshape(xs, ts, y, ip, fp):
    return ts[0].reshape((-1,) + y.shape)


def _strided(xs, ts, y, ip, fp):
    idx = _strided_index(ip, xs[0].size)
    return ts[0].reshape(ts[0].shape[0], -1)[:, idx].reshape((-1,) + y.shape)


def _gather(xs, ts, y, ip, fp):
    idx = np.asarray(xs[1]).reshape(-1)
    return np.take(_three(ts[0], ip), idx, axis=2).reshape((-1,) + y.shape)


def _concat(xs, ts, y, ip, fp):
    outer, k = int(ip[0]), _k(ts)
    parts = [np.zeros((k, outer, x.size // max(outer, 1))) if t is None else t.reshape(k, outer, -1)
             for x, t in zip(xs, ts)]
    return np.concatenate(parts, axis=2).reshape((k,) + y.shape)


def _cross_entropy(xs, ts, y, ip, fp):
    x, labels = xs
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    t = ts[0]
    return (p[None] * t).sum(axis=2) - t[:, np.arange(x.shape[0]), labels]


def _control(xs, ts, y, ip, fp):  # replayed by the interpreter itself (_Replay._scan)
    raise AssertionError("control rows are replayed by the interpreter")


RULES: dict = {}
for _d in TABLE.values():
    if _d.family == UNARY:
        RULES[_d.op] = _elementwise_unary(_d.op)
    elif _d.family == BINARY:
        RULES[_d.op] = _elementwise_binary(_d.op) if _d.differentiable else _zero
RULES.update({
    Op.WHERE: _where, Op.SUM: _sum, Op.MAX: _max, Op.SOFTMAX: _softmax,
    Op.LOG_SOFTMAX: _log_softmax, Op.MATMUL: _matmul, Op.LINEAR: _linear,
    Op.LINEAR_ACT: _linear_act, Op.RESHAPE: _reshape,
    Op.STRIDED: _strided, Op.GATHER: _gather, Op.CONCAT: _concat,
    Op.CROSS_ENTROPY: _cross_entropy, Op.SCAN_BEGIN: _control, Op.SCAN: _control,
})
del _d
# Not asserted at import (that would break `import fastgrad` while an op is being added):
# tests/test_jvp.py requires a rule for every op, and replaying a row without one says so.


def _missing(op):
    def rule(xs, ts, y, ip, fp):
        raise fail("jvp", f"op {op.name.lower()} has no forward-mode (JVP) rule",
                   "add one to fastgrad/jvp.py RULES (tests/test_jvp.py checks it)")

    return rule


# ----------------------------------------------------------------------------- the replay
class _Replay:
    """Primal values (NumPy, as fastgrad.reference) and k tangents per node, row by row."""

    def __init__(self, tape: Tape):
        self.tape = tape
        self.ref = ref = Reference(tape)
        self.views = [ref.node(v) for v in range(tape.n_nodes)]  # fixed views into the arenas
        self.rows = []
        for r in range(tape.n_rows):
            op, ins, ip, fp, out = ref._row(r)
            d = TABLE[op]
            self.rows.append((op, ins, ip, fp, out, RULES.get(op) or _missing(op),
                              d.differentiable))

    def run(self, tangents: dict, k: int, start=0, stop=None):
        """Forward rows [start, stop) computing values and tangents (dict node -> (k, *shape))."""
        stop = len(self.rows) if stop is None else stop
        views, shapes, forward = self.views, self.tape.shapes, self.ref._forward
        r = start
        while r < stop:
            op, ins, ip, fp, out, rule, differentiable = self.rows[r]
            if op == Op.SCAN_BEGIN:
                r = int(ip[0])  # the SCAN row: its body rows are run by _scan
                continue
            if op == Op.SCAN:
                self._scan(ip, ins, tangents, k)
                r += 1
                continue
            xs = [views[i] for i in ins]
            y = views[out]
            y[...] = forward(op, xs, ip, fp, shapes[out])
            ts = [tangents.get(i) for i in ins]
            if differentiable and any(t is not None for t in ts):
                tangents[out] = np.ascontiguousarray(rule(xs, ts, y, ip, fp))
            else:
                tangents.pop(out, None)
            r += 1
        return tangents

    def _scan(self, ip, ins, tangents, k):
        ref = self.ref
        T, b0, b1, nc, nstack, has_x = (int(v) for v in ip[[0, 2, 3, 4, 5, 6]])
        x_node, x_slot = int(ip[7]), int(ip[8])
        quads = ip[16 : 16 + 4 * nc].reshape(nc, 4)
        stack = ip[16 + 4 * nc : 16 + 4 * nc + 2 * nstack].reshape(nstack, 2)
        def carry(dst, src):  # value and tangent of node src into node dst
            ref.node(dst)[...] = ref.node(src)
            if src in tangents:
                tangents[dst] = tangents[src].copy()
            else:
                tangents.pop(dst, None)

        for init, slot, _, _ in quads:
            carry(slot, init)
        xs, txs = (ref.node(x_node), tangents.get(x_node)) if has_x else (None, None)
        stacked_t = {int(s): [] for _, s in stack}
        for t in range(T):
            if has_x:
                ref.node(x_slot)[...] = xs[t]
                if txs is not None:
                    tangents[x_slot] = txs[:, t]
            self.run(tangents, k, b0, b1)
            for body, s in stack:
                ref.node(s)[t] = ref.node(body)
                stacked_t[int(s)].append(tangents.get(int(body)))
            for _, slot, cout, _ in quads:
                carry(slot, cout)
        for _, _, cout, final in quads:
            ref.node(final)[...] = ref.node(cout)
            if cout in tangents:
                tangents[final] = tangents[cout]
        for s, ts in stacked_t.items():
            if any(t is not None for t in ts):
                shape = self.tape.shapes[s][1:]
                tangents[s] = np.stack([np.zeros((k,) + shape) if t is None else t for t in ts],
                                       axis=1)


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
        ref = self.replay.ref
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
                if ref.t.node_kind.a[v] == 0:
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
