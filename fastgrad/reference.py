"""A NumPy interpreter of the tape format: the living definition the Numba replay is tested against.

It reads the same flat arrays (ops, operands, iparams, fparams, node table), decodes each row's
attributes through its op's layout and runs the op registry's NumPy forward and VJP
(fastgrad/ops/), returning fresh value and gradient arenas. Slow and plain on purpose; it knows
no op by name (fg.scan's control rows are run by fastgrad/jvp.py's replay, not here).
"""

from __future__ import annotations

import numpy as np

from .ops import TABLE, Op


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

    def row(self, r):
        """(op definition, input nodes, decoded attributes, output node) of row ``r``."""
        t = self.t
        d = TABLE[Op(int(t.ops.a[r]))]
        ins = [int(i) for i in t.in_idx.a[t.in_ptr.a[r] : t.in_ptr.a[r + 1]]]
        ip = t.iparams.a[t.ip_ptr.a[r] : t.ip_ptr.a[r + 1]]
        fp = t.fparams.a[t.fp_ptr.a[r] : t.fp_ptr.a[r + 1]]
        return d, ins, d.layout.decode(ip, fp, d.name), int(t.outs.a[r])

    def forward(self):
        for r in range(self.t.n_rows):
            d, ins, a, out = self.row(r)
            self.node(out)[...] = self.forward_row(d, [self.node(i) for i in ins], a,
                                                   self.t.shapes[out])
        return self.values

    def forward_row(self, d, xs, a, out_shape):
        """One row's output: the registry's NumPy forward (a hook for subclasses)."""
        if d.forward is None:
            raise NotImplementedError(f"{d.name} rows are run by fastgrad/jvp.py's replay")
        return d.forward(xs, a, out_shape)

    def backward(self, node, seed):
        """Gradient arena after a reverse sweep seeded with ``seed`` at ``node``."""
        t = self.t
        self.grads = np.zeros_like(self.values)
        self.node(node, self.grads)[...] = seed
        stop = t.producer.get(node, -1) + 1
        for r in range(stop - 1, -1, -1):
            d, ins, a, out = self.row(r)
            if not t.node_need.a[out] or not d.differentiable:
                continue
            if d.vjp is None:
                raise NotImplementedError(f"{d.name} rows are not run by this interpreter")
            xs = [self.node(i) for i in ins]
            # a None gradient: an integer operand, or one whose gradient slot the output shares
            for i, g in zip(ins, d.vjp(xs, self.node(out), self.node(out, self.grads), a)):
                if g is not None and t.node_need.a[i]:
                    self.node(i, self.grads)[...] += g
        return self.grads
