"""A NumPy interpreter of the tape format: the living definition the Numba replay is tested against.

It reads the same flat arrays (ops, operands, iparams, fparams, node table) and computes every
row with NumPy, forward and backward, returning fresh value and gradient arenas. Slow and plain
on purpose.
"""

from __future__ import annotations

import numpy as np

from .opcodes import BINARY, LOSS, MATMUL, REDUCE, UNARY, WHERE, Op
from .ops import TABLE


def _unbroadcast(g, shape):
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for d, s in enumerate(shape):
        if s == 1 and g.shape[d] != 1:
            g = g.sum(axis=d, keepdims=True)
    return g


def _strided_index(ip, size):
    nd, base = int(ip[0]), int(ip[1])
    shape, strides = ip[2 : 2 + nd], ip[2 + nd : 2 + 2 * nd]
    grids = np.indices(tuple(int(s) for s in shape)).reshape(nd, -1)
    return base + (grids * strides.reshape(nd, 1)).sum(axis=0)


class Reference:
    """Evaluate ``tape`` with NumPy. ``values``/``ivalues`` start as copies of the tape's arenas."""

    def __init__(self, tape):
        self.t = tape
        self.values = tape.values.view.copy()
        self.ivalues = tape.ivalues.view.copy()

    def node(self, v, arena=None):
        t = self.t
        arena = (self.values if t.node_kind.a[v] == 0 else self.ivalues) if arena is None else arena
        off = int(t.node_off.a[v])
        return arena[off : off + int(t.node_size.a[v])].reshape(t.shapes[v])

    def _row(self, r):
        t = self.t
        ins = [int(i) for i in t.in_idx.a[t.in_ptr.a[r] : t.in_ptr.a[r + 1]]]
        ip = t.iparams.a[t.ip_ptr.a[r] : t.ip_ptr.a[r + 1]]
        fp = t.fparams.a[t.fp_ptr.a[r] : t.fp_ptr.a[r + 1]]
        return Op(int(t.ops.a[r])), ins, ip, fp, int(t.outs.a[r])

    def forward(self):
        for r in range(self.t.n_rows):
            op, ins, ip, fp, out = self._row(r)
            self.node(out)[...] = self._forward(op, [self.node(i) for i in ins], ip, fp,
                                                self.t.shapes[out])
        return self.values

    def _forward(self, op, xs, ip, fp, out_shape):
        fam, d = op // 100, TABLE[op]
        if fam == UNARY:
            return d.np_forward(xs[0], fp[0], fp[1])
        if fam == BINARY:
            return d.np_forward(xs[0], xs[1])
        if fam == WHERE:
            return np.where(xs[0] != 0, xs[1], xs[2])
        if fam == REDUCE:
            x3 = xs[0].reshape(int(ip[0]), int(ip[1]), int(ip[2]))
            if op == Op.SUM:
                return x3.sum(axis=1).reshape(out_shape)
            if op == Op.MAX:
                return x3.max(axis=1).reshape(out_shape)
            z = x3 - x3.max(axis=1, keepdims=True)
            lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
            return (np.exp(z - lse) if op == Op.SOFTMAX else z - lse).reshape(out_shape)
        if op == Op.LINEAR:
            return xs[0] @ xs[1].T + xs[2]
        if op == Op.LINEAR_ACT:
            d = TABLE[Op(int(ip[7]))]
            return d.np_forward(xs[0] @ xs[1].T + xs[2], 0.0, 0.0)
        if fam == MATMUL:
            return np.matmul(xs[0], np.swapaxes(xs[1], -1, -2) if ip[4] else xs[1])
        if op == Op.RESHAPE:
            return xs[0].reshape(out_shape)
        if op == Op.STRIDED:
            return xs[0].reshape(-1)[_strided_index(ip, xs[0].size)].reshape(out_shape)
        if op == Op.GATHER:
            x3 = xs[0].reshape(int(ip[0]), int(ip[1]), int(ip[2]))
            return np.take(x3, xs[1].reshape(-1), axis=1).reshape(out_shape)
        if op == Op.CONCAT:
            outer = int(ip[0])
            return np.concatenate([x.reshape(outer, -1) for x in xs], axis=1).reshape(out_shape)
        if fam == LOSS:
            x = xs[0]
            m = x.max(axis=1, keepdims=True)
            lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
            return lse - x[np.arange(x.shape[0]), xs[1]]
        raise NotImplementedError(op)

    def backward(self, node, seed):
        """Gradient arena after a reverse sweep seeded with ``seed`` at ``node``."""
        t = self.t
        self.grads = np.zeros_like(self.values)
        self.node(node, self.grads)[...] = seed
        stop = t.producer.get(node, -1) + 1
        for r in range(stop - 1, -1, -1):
            op, ins, ip, fp, out = self._row(r)
            if not t.node_need.a[out]:
                continue
            xs = [self.node(i) for i in ins]
            gs = self._vjp(op, xs, self.node(out), self.node(out, self.grads), ip, fp)
            for i, g in zip(ins, gs):
                if g is not None and t.node_need.a[i]:
                    if op == Op.RESHAPE:
                        continue  # output aliases the input's slot: already there
                    self.node(i, self.grads)[...] += g
        return self.grads

    def _vjp(self, op, xs, y, g, ip, fp):
        fam, d = op // 100, TABLE[op]
        if fam == UNARY:
            return [d.np_vjp(xs[0], y, g, fp[0], fp[1])]
        if fam == BINARY:
            if not d.differentiable:
                return [None, None]
            ga, gb = d.np_vjp(xs[0], xs[1], y, g)
            return [_unbroadcast(np.broadcast_to(ga, y.shape), xs[0].shape),
                    _unbroadcast(np.broadcast_to(gb, y.shape), xs[1].shape)]
        if fam == WHERE:
            c = xs[0] != 0
            return [None, _unbroadcast(np.where(c, g, 0), xs[1].shape),
                    _unbroadcast(np.where(c, 0, g), xs[2].shape)]
        if fam == REDUCE:
            shape3 = (int(ip[0]), int(ip[1]), int(ip[2]))
            x3 = xs[0].reshape(shape3)
            if op in (Op.SUM, Op.MAX):
                g3 = g.reshape(shape3[0], 1, shape3[2])
                if op == Op.SUM:
                    return [np.broadcast_to(g3, shape3).reshape(xs[0].shape)]
                # the first maximal element takes the gradient; where the max is NaN, each NaN
                # element gets a NaN gradient (the slope at a NaN), the others none
                y3 = y.reshape(shape3[0], 1, shape3[2])
                first = np.argmax(x3 == y3, axis=1)
                out = np.zeros(shape3)
                o, j = np.meshgrid(np.arange(shape3[0]), np.arange(shape3[2]), indexing="ij")
                out[o, first, j] = np.where(np.isnan(y3[:, 0, :]), 0.0, g3[:, 0, :])
                out[np.isnan(x3)] = np.nan
                return [out.reshape(xs[0].shape)]
            y3, g3 = y.reshape(shape3), g.reshape(shape3)
            if op == Op.SOFTMAX:
                return [(y3 * (g3 - (g3 * y3).sum(axis=1, keepdims=True))).reshape(xs[0].shape)]
            return [(g3 - np.exp(y3) * g3.sum(axis=1, keepdims=True)).reshape(xs[0].shape)]
        if op == Op.LINEAR:
            x, w, _ = xs
            g2, x2 = g.reshape(-1, w.shape[0]), x.reshape(-1, w.shape[1])
            return [(g2 @ w).reshape(x.shape), g2.T @ x2, g2.sum(axis=0)]
        if op == Op.LINEAR_ACT:  # the activation's VJP (from its pre-activation), then LINEAR's
            x, w, c = xs
            z = x @ w.T + c
            gz = TABLE[Op(int(ip[7]))].np_vjp(z, y, g, 0.0, 0.0)
            g2, x2 = gz.reshape(-1, w.shape[0]), x.reshape(-1, w.shape[1])
            gc = gz if c.shape == gz.shape and ip[8] else g2.sum(axis=0)
            return [(g2 @ w).reshape(x.shape), g2.T @ x2, gc.reshape(c.shape)]
        if fam == MATMUL:
            a, b = xs
            bt = np.swapaxes(b, -1, -2) if ip[4] else b
            ga = np.matmul(g, np.swapaxes(bt, -1, -2))
            gb = np.matmul(np.swapaxes(a, -1, -2), g)
            gb = np.swapaxes(gb, -1, -2) if ip[4] else gb
            return [_unbroadcast(ga, a.shape), _unbroadcast(gb, b.shape)]
        if op == Op.RESHAPE:
            return [None]
        if op == Op.STRIDED:
            gx = np.zeros(xs[0].size)
            np.add.at(gx, _strided_index(ip, xs[0].size), g.reshape(-1))
            return [gx.reshape(xs[0].shape)]
        if op == Op.GATHER:
            outer, n, inner = (int(v) for v in ip[:3])
            gx = np.zeros((outer, n, inner))
            idx = xs[1].reshape(-1)
            np.add.at(gx, (slice(None), idx, slice(None)), g.reshape(outer, idx.size, inner))
            return [gx.reshape(xs[0].shape), None]
        if op == Op.CONCAT:
            outer = int(ip[0])
            g2 = g.reshape(outer, -1)
            widths = [int(w) for w in ip[2:]]
            cuts = np.cumsum(widths)[:-1]
            return [p.reshape(x.shape) for p, x in zip(np.split(g2, cuts, axis=1), xs)]
        if fam == LOSS:
            x, labels = xs
            p = np.exp(x - x.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(x.shape[0]), labels] -= 1
            return [p * g[:, None], None]
        raise NotImplementedError(op)
