"""The fusion pass: chains of plain rows on a recorded tape rewritten into one fused row.

The patterns are data in the op registry (``fastgrad.ops.FUSIONS``): a chain of op codes, first
row to last, and a ``build`` that gives the fused row's op, operands and attributes for a match
(or None where the match does not fit, e.g. a bias of the wrong shape). The pass finds chains
whose every intermediate output is read by the next row of the chain alone and is nothing a
caller can see (``keep``: a loss, a scan's carries), replaces the chain's last row by the fused
row (same output node) and drops the others; their outputs stay on the tape, unwritten, as
nodes labelled ``fused``. The fused row is recorded through its op's shape rule, like any row.

Where it runs: ``fg.compile`` over its traced tape (outside scan bodies) and ``fg.scan`` over
each body it records, so the code people write reaches the fused kernels (an Elman cell written
as ``(h @ W.T + x).tanh()`` becomes one LINEAR_ACT row, which the scan runs on its single-cell
path). Eager tapes are not rewritten: every tensor of an eager step may still be read.
``fg.compile(..., fuse=False)`` and ``fg.scan(..., fuse=False)`` turn it off.

Results: the fused kernels do the same arithmetic in the same order, except that a product
read through a transposed operand runs on the transposed-operand loops (its sums rounded in
another order): equal to the unfused tape within rounding (tests/test_fusion.py).

>>> import numpy as np, fastgrad as fg
>>> w = fg.nn.Parameter(np.ones((3, 2)))
>>> b = fg.nn.Parameter(np.zeros(2))
>>> step = fg.compile(lambda x: (x @ w + b).tanh().sum())
>>> loss, grads = step(np.ones((4, 3)))
>>> [name for _, name, _, _ in next(iter(step.programs.values())).tape.rows()]
['linear_act', 'sum']
"""

from __future__ import annotations

import contextlib
import threading
from types import SimpleNamespace

import numpy as np

from ..ops import FUSIONS, TABLE, Op
from ..ops.control import SCAN_LAYOUT

__all__ = ["body_rows", "enabled", "fuse_body", "fuse_program", "fuse_rows", "fusion_off",
           "scan_nodes"]

_STATE = threading.local()


def enabled() -> bool:
    """Whether recording in this thread fuses (``fusion_off`` turns it off)."""
    return getattr(_STATE, "on", True)


@contextlib.contextmanager
def fusion_off(off=True):
    """Within the block, ``fg.scan`` bodies recorded in this thread are not fused (what
    ``fg.compile(..., fuse=False)`` uses while it traces)."""
    before = enabled()
    _STATE.on = before and not off
    try:
        yield
    finally:
        _STATE.on = before


def scan_nodes(tape) -> set[int]:
    """Every node a SCAN row names in its header (carries, stacked output, xs and slots, own
    nodes): the loop reads or writes them, so no fusion may drop them."""
    nodes = set()
    for r in tape.scan_rows:
        ip = tape.iparams.a[tape.ip_ptr.a[r] : tape.ip_ptr.a[r + 1]]
        a = SCAN_LAYOUT.decode(ip, [], "scan")
        nodes.update(int(v) for v in a.carries.reshape(-1))
        nodes.update(int(v) for v in a.stacked.reshape(-1))
        nodes.update(int(v) for v in a.own)
        nodes.update(v for v in (a.xs, a.x_slot) if v >= 0)
    return nodes


def body_rows(tape) -> set[int]:
    """The rows of every scan body on the tape, with their SCAN_BEGIN and SCAN rows."""
    rows = set()
    for r in tape.scan_rows:
        b0, b1 = tape.scan_body(r)
        rows.update(range(b0 - 1, b1 + 1))
    return rows


def fuse_rows(tape, rows, keep) -> int:
    """Fuse the chains made of rows ``rows`` (an iterable of row numbers) of ``tape``, whose
    intermediate outputs are not in ``keep`` and are read by nothing else; then drop rows of
    ``rows`` that only fed a fused chain (a transpose its fused product now reads through).
    Returns the number of chains fused."""
    rows = sorted(set(rows))
    if not rows:
        return 0
    ops, outs = tape.ops.view, tape.outs.view
    ptr, idx = tape.in_ptr.view, tape.in_idx.view
    readers = np.bincount(idx, minlength=tape.n_nodes)
    producer = {int(outs[r]): r for r in rows}

    def inputs(r):
        return [int(v) for v in idx[ptr[r] : ptr[r + 1]]]

    def stage(r, link):
        return SimpleNamespace(row=r, op=Op(int(ops[r])), inputs=inputs(r), out=int(outs[r]),
                               attrs=tape.attrs(r), link=link)

    def chains(r, pattern, j):
        """The matches of pattern stages 0..j ending at row r (stage j)."""
        if int(ops[r]) not in pattern[j]:
            return
        if j == 0:
            yield [stage(r, -1)]
            return
        for pos, v in enumerate(inputs(r)):
            q = producer.get(v)
            if q is None or q >= r or q in used or readers[v] != 1 or v in keep:
                continue
            for head in chains(q, pattern, j - 1):
                yield head + [stage(r, pos)]

    match_tools = SimpleNamespace(shape=lambda v: tape.shapes[v],
                                  transposed=lambda v: _transposed(tape, tape.producer.get(v)))
    used, replace, drop, fused = set(), {}, set(), 0
    for fusion in FUSIONS:
        for r in rows:
            if r in used:
                continue
            for chain in chains(r, fusion.chain, len(fusion.chain) - 1):
                made = fusion.build(chain, match_tools)
                if made is None or made[-1][0] != len(chain) - 1:
                    continue
                recorded = []
                for at, op, operands, attrs in made:
                    d, node = TABLE[Op(op)], chain[at].out
                    out_shape, ip, fp = d.rule(d.name, [tape.shapes[v] for v in operands],
                                               **attrs)
                    if tuple(out_shape) != tuple(tape.shapes[node]) or max(operands) >= node:
                        break  # a row writes the node it takes over as it was shaped, after
                        # its operands (a scan body's nodes are in recording order)
                    recorded.append((chain[at].row, node, (Op(op), operands, ip, fp)))
                else:
                    for s in chain:
                        used.add(s.row)
                        for v in s.inputs:
                            readers[v] -= 1
                    for row, node, new in recorded:
                        replace[row] = new
                        for v in new[1]:
                            readers[v] += 1
                        if row != r:  # a node taken over: it needs a gradient if they do
                            tape.node_need.a[node] = max(tape.node_need.a[v] for v in new[1])
                    drop.update(s.row for s in chain if s.row not in replace)
                    fused += 1
                    break
    # a transpose nothing reads (the fused products read its source now) goes too
    for r in reversed(rows):
        v = int(outs[r])
        if r not in used and not readers[v] and v not in keep and _transposed(tape, r) >= 0:
            drop.add(r)
    tape.rewrite(replace, drop)
    return fused


def _transposed(tape, r) -> int:
    """The node that row ``r`` transposes, if it is the transpose of a matrix (a STRIDED view
    (b, a) of an (a, b) node with strides (1, b), as ``w.T`` records it), else -1."""
    if r is None or r < 0 or tape.ops.a[r] != Op.STRIDED:
        return -1
    src = int(tape.in_idx.a[tape.in_ptr.a[r]])
    shape = tape.shapes[src]
    a = tape.attrs(r)
    if len(shape) != 2 or a.ndim != 2 or a.base != 0:
        return -1
    if tuple(a.dims) != shape[::-1] or tuple(a.strides) != (1, shape[1]):
        return -1
    return src


def fuse_body(tape, body_start, keep) -> int:
    """Fuse the rows of the scan body being recorded (``body_start`` to the last row)."""
    return fuse_rows(tape, range(body_start, tape.n_rows), keep)


def fuse_program(tape, keep) -> int:
    """Fuse the rows of a traced program outside its scan bodies (each body was fused as it
    was recorded); ``keep``: the nodes the program reads back (its loss, its input slots)."""
    inside = body_rows(tape)
    return fuse_rows(tape, (r for r in range(tape.n_rows) if r not in inside),
                     set(keep) | scan_nodes(tape))

