"""The recorder: one op on tensors becomes one row on a tape.

``record`` checks the operands with the op's shape rule (its registry entry, fastgrad/ops/),
chooses the tape (the fg.scan body being recorded, else the operands' tapes, merged, else a
new one), imports leaves and constants as nodes (``import_tensor``) and appends the row;
``tensor.apply`` wraps the output node in a ``Tensor``. Nothing is computed here: values are
replayed natively when something reads them (runtime/tape.py)."""

from __future__ import annotations

import inspect

import numpy as np

from ..core.errors import fail
from ..ops import TABLE, Op, fmt
from ..ops.nodes import FLOAT_NODE, INDEX_NODE
from ..runtime.tape import RECORDING, Tape, same_bits
from .inputs import checked_indices, input_dtype_problem
from .modes import get_default_dtype, is_grad_enabled, is_replayed, is_tracing, scan_body

__all__ = ["float_dtype_of", "import_tensor"]


_ATTR_NAMES: dict = {}


def _attr_names(op):
    """The keyword attributes op's shape rule takes (None: any, for rules taking **attrs)."""
    if op not in _ATTR_NAMES:
        params = list(inspect.signature(TABLE[op].rule).parameters.values())[2:]
        _ATTR_NAMES[op] = None if any(p.kind == p.VAR_KEYWORD for p in params) else \
            frozenset(p.name for p in params)
    return _ATTR_NAMES[op]


def import_tensor(tape, t, kind, need_values, what=None):
    """Node id of tensor ``t`` on ``tape``, copying a leaf's (or foreign tensor's) values in.

    A leaf used again on the same tape reuses its copy only while the copy holds the leaf's
    current values (``same_bits``): after an optimizer step, a write into its array or into a
    NumPy array shared through ``fg.from_numpy``, the later use gets a fresh copy, as PyTorch
    reads the current values. The old copy stays for the rows that read it; ``backward``
    refuses to run through one that needs it (``Tape.check_saved_leaves``).
    """
    if t._tape is not None and not need_values and t.tape is tape:
        return t._node
    key = id(t)
    if kind == FLOAT_NODE and key in tape.tensors.imported:
        v = tape.tensors.imported[key][1]
        # a recorded tensor's values never change; a leaf's may have since it was copied
        if t._tape is not None or same_bits(tape.node_values(v), t.numpy()):
            return v
    values = t.numpy()
    if kind == FLOAT_NODE and values.dtype != tape.dtype:
        values = values.astype(tape.dtype)
    need = t.requires_grad and t._tape is None and kind == FLOAT_NODE and is_grad_enabled()
    v = tape.add_input(values, kind=kind, need=need, label="leaf" if need else "const",
                       what=what)
    if kind == FLOAT_NODE and (need or not t.requires_grad):
        # not a parameter's no_grad copy: a later use with grad on must import it afresh
        tape.tensors.imported[key] = (t, v)
    if kind == FLOAT_NODE and t._tape is None:
        tape.tensors.copies.append((t, v))
    if need:
        tape.tensors.leaves.append((t, v))
    return v


def check_attributes(op, attrs):
    """Refuse keyword attributes that op's shape rule does not take."""
    allowed = _attr_names(op)
    if allowed is not None and not allowed.issuperset(attrs):
        name = TABLE[op].name
        raise fail(name, f"unknown attribute(s) {sorted(set(attrs) - allowed)}",
                   f"{name} takes " + (", ".join(sorted(allowed)) or "no attributes"))


def record(op: Op, ts, attrs):
    """Check the operand tensors ``ts`` with the op's shape rule and record one row; returns
    ``(tape, output node, whether it needs a gradient, whether the result is a constant to
    fold)``, or the result array itself for integer and bool constants (kept exact, as
    PyTorch's). The caller wraps it in a tensor (``tensor.apply``)."""
    d = TABLE[op]
    name = d.name
    if (d.arity >= 0 and len(ts) != d.arity) or not ts:
        raise fail(name, f"takes {d.arity if d.arity >= 0 else 'one or more'} operand(s), got "
                   f"{len(ts)}")
    floats = {float_dtype_of(t) for i, t in enumerate(ts) if i not in d.int_inputs} - {None}
    for i, t in enumerate(ts):
        problem = input_dtype_problem(t.dtype, None)
        if problem is not None:
            raise fail(name, f"{problem[0]} (operand {i}, shape {fmt(t.shape)})", problem[1])
    if any(input_dtype_problem(f, next(iter(floats))) for f in floats):
        raise fail(
            name,
            "operands have dtypes " + " and ".join(sorted(x.name for x in floats)) + " with shapes "
            + ", ".join(fmt(t.shape) for t in ts),
            "fastgrad does not promote silently: cast one side with .astype(np.float64) or "
            ".astype(np.float32)",
        )
    any_float = bool(floats)
    dtype = floats.pop() if floats else get_default_dtype()
    for i in d.int_inputs:
        if ts[i].dtype.kind not in "iu":
            raise fail(name, f"operand {i} must hold integers (indices/labels), got {ts[i].dtype} "
                       f"of shape {fmt(ts[i].shape)}", "pass an integer array (np.int64)")
    shapes = [t.shape for t in ts]
    out_shape, ip, fp = d.rule(name, shapes, **attrs)
    if not any_float and d.integers and all(t._tape is None for t in ts) and \
            not is_replayed():
        # integer and bool constants stay integers, as in PyTorch (a bool sum counts)
        try:
            out = d.forward([t._data for t in ts], d.layout.decode(ip, fp, name), out_shape)
        except TypeError as e:  # -mask: NumPy and PyTorch refuse it
            raise fail(name, f"not defined for {ts[0].dtype} operands ({e})",
                       "cast first, e.g. x.long() or x.float()") from None
        return np.array(out)
    grad_on = is_grad_enabled()
    need = grad_on and d.differentiable and any(
        t.requires_grad for i, t in enumerate(ts) if i not in d.int_inputs)
    # one thread at a time changes tapes (RECORDING), and never a tape a native call is
    # replaying (its lock): threads sharing a tensor take turns, each row whole
    with RECORDING:
        tape, out, folding = _record(op, name, d, ts, shapes, attrs, out_shape, ip, fp,
                                     dtype, grad_on, need)
    return tape, out, need, folding


def float_dtype_of(t):
    """The float dtype operand ``t`` brings to an op: its own, its tape's for a mask or index
    values held as floats on a tape, None for integer and bool constants."""
    if t._as is not None and t._tape is not None:
        return t.tape.dtype
    return t.dtype if t.dtype.kind == "f" else None


def _record(op, name, d, ts, shapes, attrs, out_shape, ip, fp, dtype, grad_on, need):
    """Choose the tape (merging the operands' tapes), record the row on it; returns (tape,
    output node, whether the result is a constant to fold). The caller holds RECORDING."""
    # Choose the tape: the operands' own (merging independent graphs), else a fresh one.
    # While fg.compile traces, no_grad rows are recorded too (without gradients) and nothing
    # is folded: the program recomputes them at each call from the current leaves.
    tracing = is_tracing()
    tapes = []
    if grad_on or tracing:
        for t in ts:
            if t._tape is not None and t.tape not in tapes:
                tapes.append(t.tape)
    body = scan_body()
    if body is not None and body not in tapes:
        # inside a scan body every op is recorded on the scan's tape, under no_grad too: the
        # loop replays these rows T times (without them it would return its initial carry)
        tapes.insert(0, body)
    folding = not tapes and not need and not tracing  # constants only: compute now, a leaf
    if tapes:
        tape = body if body is not None else max(
            tapes, key=lambda tp: (bool(tp.scan_rows), tp.n_rows))
        if tape.dtype != dtype:
            raise fail(name, f"operands recorded in {tape.dtype} mixed with {dtype}",
                       "cast the inputs to one dtype")
    else:
        tape = Tape(dtype)
    with tape.lock:
        for other in tapes:
            if other is not tape:
                tape.absorb(other)
        return tape, _record_row(tape, op, name, d, ts, shapes, attrs, out_shape, ip, fp,
                                 grad_on or tracing, need, body), folding


def _record_row(tape, op, name, d, ts, shapes, attrs, out_shape, ip, fp, on_graph, need, body):
    """Import the operands into ``tape`` and record the row; returns its output node.
    ``on_graph``: an operand recorded on ``tape`` is read by node (grad on, or tracing), not
    copied in as a constant."""
    nodes = []
    for i, t in enumerate(ts):
        kind = INDEX_NODE if i in d.int_inputs else FLOAT_NODE
        if kind == INDEX_NODE and t._tape is None:
            lo, hi = d.int_bound(shapes, **attrs)
            where = "operand shapes " + ", ".join(fmt(s) for s in shapes)
            v = tape.add_input(checked_indices(name, t.numpy(), lo, hi, where), kind=INDEX_NODE,
                               label="const", what=name)
            if is_tracing():  # fg.compile reloads it (checked again) at each call
                tape.tensors.index_copies.append((t, v, lo, hi, f"{name}: {where}"))
            nodes.append(v)
        else:
            v = import_tensor(tape, t, kind, need_values=not on_graph and body is None, what=name)
            if tape.node_kind.a[v] == INDEX_NODE and kind == FLOAT_NODE:
                # fg.compile traces an integer input as an index slot; it catches this error
                # and traces again with that input cast to floats, as eager ops cast it
                err = fail(name, f"operand {i} (shape {fmt(t.shape)}) is an integer input of a "
                           "compiled function, used in float arithmetic",
                           "pass that input as floats, e.g. y.astype(np.float32)")
                err.integer_input = tape.labels.get(v)
                raise err
            if kind == INDEX_NODE and tape.node_kind.a[v] != INDEX_NODE:
                raise fail(name, f"operand {i} (shape {fmt(t.shape)}) holds indices computed "
                           "inside fg.compile or fg.scan (argmax, max's indices), which "
                           "cannot index yet", "index with an input of the function, or use "
                           "the indices in comparisons and arithmetic")
            if kind == INDEX_NODE and t._tape is not None:
                lo, hi = d.int_bound(shapes, **attrs)
                old = tape.int_bounds.get(v, (0, hi))
                tape.int_bounds[v] = (0, min(old[1], hi))
            nodes.append(v)
    out = tape.record(op, nodes, out_shape, ip, fp, need)
    if body is not None and tape.body.active and tape.body.marker >= 0 and \
            all(tape.outside_body(v) for v in nodes):
        tape.hoist_last_row()  # loop-invariant: computed once, before the loop
    return out
