"""A NumPy interpreter of the tape format: the living definition the Numba replay is tested against.

It reads the same flat arrays (ops, operands, iparams, fparams, node table), decodes each row's
attributes through its op's layout and runs the op registry's NumPy forward and VJP
(fastgrad/ops/), returning fresh value and gradient arenas. Slow and plain on purpose; it knows
no op by name but the loop of ``fg.scan``, which it runs as the semantics say (every step's body
state kept: checkpointing changes what is stored, never the result): forward, T passes over the
body rows with the carries copied from carry_out to carry_in and x_t loaded from xs; backward,
the body's VJPs for t = T-1 .. 0 with the carries' gradients passed back and the gradients of
what the body reads from outside summed over the steps.
"""

from __future__ import annotations

import numpy as np

from ..ops import TABLE, Op
from ..ops.nodes import FLOAT_NODE

__all__ = ["Reference"]


class Reference:
    """Evaluate ``tape`` with NumPy. ``values``/``ivalues`` start as copies of the tape's arenas."""

    def __init__(self, tape):
        self.t = tape
        self.values = tape.values.view.copy()
        self.ivalues = tape.ivalues.view.copy()

    def node(self, v, arena=None):
        t = self.t
        if arena is None:
            arena = self.values if t.node_kind.a[v] == FLOAT_NODE else self.ivalues
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
        self.steps = {}  # SCAN row -> the body state after each step (for backward)
        self._forward(0, self.t.n_rows)
        return self.values

    def _forward(self, start, stop):
        r = start
        while r < stop:
            d, ins, a, out = self.row(r)
            if d.op == Op.SCAN_BEGIN:  # the loop runs from its SCAN row
                r = a.scan_row if a.scan_row >= 0 else r + 1
                continue
            if d.op == Op.SCAN:
                self._scan_forward(r, a)
            else:
                self.node(out)[...] = self.forward_row(d, [self.node(i) for i in ins], a,
                                                       self.t.shapes[out])
            r += 1

    def _scan_forward(self, r, a):
        """The loop of SCAN row ``r`` (attributes ``a``, ops/control.py's layout), as the
        semantics say: the carries' initial values into their slots; per step t, x_t into its
        slot, the body rows, the step's outputs stacked, carry_out into carry_in; the last
        carries out. The hooks below say what a step moves; forward mode (jvp.py) extends them
        to carry tangents, so the loop is written once."""
        self.begin_loop(a)
        for init, slot, _, _ in a.carries:
            self.copy_carry(slot, init)
        for t in range(a.T):
            if a.has_x:
                self.load_step_input(a, t)
            self.run_rows(a.body_start, a.body_end)
            self.keep_step(r, a, t)
            for body, stacked in a.stacked:
                self.stack_output(body, stacked, t)
            for _, slot, cout, _ in a.carries:
                self.copy_carry(slot, cout)
        for _, _, cout, final in a.carries:
            self.copy_carry(final, cout)
        self.finish_loop(a)

    # what one step of a loop moves (extended by forward mode, jvp.py)
    def begin_loop(self, a):
        pass

    def copy_carry(self, dst, src):
        self.node(dst)[...] = self.node(src)

    def load_step_input(self, a, t):
        self.node(a.x_slot)[...] = self.node(a.xs)[t]

    def run_rows(self, start, stop):
        self._forward(start, stop)

    def keep_step(self, r, a, t):
        """Keep the body's state after step t, which the loop's backward reads."""
        if t == 0:
            self.steps[r] = []
        self.steps[r].append([self.node(int(v)).copy() for v in a.own])

    def stack_output(self, body, stacked, t):
        self.node(stacked)[t] = self.node(body)

    def finish_loop(self, a):
        pass

    def forward_row(self, d, xs, a, out_shape):
        """One row's output: the registry's NumPy forward (a hook for subclasses)."""
        if d.forward is None:
            raise NotImplementedError(f"{d.name} rows are run by transforms/jvp.py's replay")
        return d.forward(xs, a, out_shape)

    def backward(self, node, seed):
        """Gradient arena after a reverse sweep seeded with ``seed`` at ``node`` (after
        ``forward``, whose per-step states a loop's backward reads)."""
        self.grads = np.zeros_like(self.values)
        self.node(node, self.grads)[...] = seed
        self._backward(self.t.producer.get(node, -1), -1)
        return self.grads

    def _backward(self, start, stop):
        """The VJPs of rows start, start-1, ..., stop+1."""
        t = self.t
        r = start
        while r > stop:
            d, ins, a, out = self.row(r)
            if d.op == Op.SCAN:
                if t.node_need.a[out]:
                    self._scan_backward(r, a)
                r = a.begin_row - 1  # the body and its marker ran in the loop
                continue
            r -= 1
            if not t.node_need.a[out] or not d.differentiable:
                continue
            if d.vjp is None:
                raise NotImplementedError(f"{d.name} rows are not run by this interpreter")
            xs = [self.node(i) for i in ins]
            # a None gradient: an integer operand, or one whose gradient slot the output shares
            for i, g in zip(ins, d.vjp(xs, self.node(out), self.node(out, self.grads), a)):
                if g is not None and t.node_need.a[i]:
                    self.node(i, self.grads)[...] += g

    def _scan_backward(self, r, a):
        own, grads = [int(v) for v in a.own], self.grads
        carried = [self.node(final, grads).copy() for _, _, _, final in a.carries]
        for t in range(a.T - 1, -1, -1):
            for v, value in zip(own, self.steps[r][t]):  # the body as it was at step t
                self.node(v)[...] = value
                self.node(v, grads)[...] = 0
            for (_, _, cout, _), g in zip(a.carries, carried):
                self.node(cout, grads)[...] += g
            for body, stacked in a.stacked:
                self.node(body, grads)[...] += self.node(stacked, grads)[t]
            self._backward(a.body_end - 1, a.body_start - 1)
            if a.has_x and self.t.node_need.a[a.xs]:
                self.node(a.xs, grads)[t] += self.node(a.x_slot, grads)
            carried = [self.node(slot, grads).copy() for _, slot, _, _ in a.carries]
        for (init, _, _, _), g in zip(a.carries, carried):
            if self.t.node_need.a[init]:
                self.node(init, grads)[...] += g
