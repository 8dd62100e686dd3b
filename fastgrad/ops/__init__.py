"""THE op registry: the only list of fastgrad's primitive ops, one module per family.

Each family module (unary, binary, selection, reduce, matmul, movement, loss, control) defines
its ops as ``OpDef`` records, one per op and whole on adjacent lines: code, attribute layout,
shape rule, NumPy forward / VJP / JVP, test samples, front-end call and kernel file. This module
collects them into ``TABLE`` and the ``Op`` enum and checks that every definition is complete.

Invariants: a code is ``100 * family + index`` and append-only (saved tapes and the compiled
kernels hold the numbers); codes and names are unique; nothing here imports the front end or
``fastgrad.kernels`` (the kernels import ``Op`` and the family numbers from here).

>>> from fastgrad.ops import TABLE, Op
>>> d = TABLE[Op.SUM]
>>> d.family, d.kernel, d.layout.ints
(3, 'reduce', ('outer', 'n', 'inner'))
"""

from __future__ import annotations

from enum import IntEnum

from . import binary, control, loss, matmul, movement, reduce, selection, unary
from .base import (  # noqa: F401 - the shape helpers, re-exported for the front end
    MAX_NDIM,
    Fusion,
    Layout,
    OpDef,
    Tail,
    broadcast_shapes,
    broadcast_strides,
    coalesce,
    contiguous_strides,
    flag,
    fmt,
    int_tuple,
    normalize_axis,
    real,
    split_axis,
)
from .matmul import FUSIONS, LINEAR_ACTIVATIONS  # noqa: F401

__all__ = ["BINARY", "CONTROL", "FAMILIES", "FUSIONS", "Fusion", "KERNEL_FILES",
           "LINEAR_ACTIVATIONS", "LOSS", "Layout", "MATMUL", "MAX_NDIM", "Op", "OpDef", "REDUCE",
           "SAVES", "SHAPE", "TABLE", "Tail", "UNARY", "WHERE", "broadcast_shapes",
           "broadcast_strides", "coalesce", "contiguous_strides", "flag", "fmt", "incomplete",
           "int_tuple", "normalize_axis", "real", "split_axis"]

FAMILIES = (unary, binary, selection, reduce, matmul, movement, loss, control)
UNARY, BINARY, WHERE, REDUCE, MATMUL, SHAPE, LOSS, CONTROL = (m.FAMILY for m in FAMILIES)

# Every OpDef a family module defines at top level is an op of that family (a module may
# import another family's definitions, e.g. matmul the activations it fuses: skipped here).
_DEFS = sorted((d for m in FAMILIES for d in vars(m).values()
                if isinstance(d, OpDef) and d.family == m.FAMILY), key=lambda d: d.code)

Op = IntEnum("Op", [(d.name.upper(), d.code) for d in _DEFS], module=__name__, qualname="Op")
Op.__doc__ = """The op codes, one per registry entry: code = 100 * family + index.

    >>> import fastgrad as fg
    >>> fg.Op.TANH, int(fg.Op.MATMUL) // 100  # MATMUL is in family 4, the matrix products
    (<Op.TANH: 6>, 4)
    >>> fg.Op(503).name
    'CONCAT'
    """

for _d in _DEFS:
    object.__setattr__(_d, "op", Op(_d.code))  # bind each definition to its enum member
TABLE: dict[Op, OpDef] = {d.op: d for d in _DEFS}

KERNEL_FILES = ("elementwise", "reduce", "linalg", "movement", "scan")
SAVES = ("inputs", "output", "nothing", "other factor")


def incomplete(d: OpDef) -> list[str]:
    """The parts of ``d``'s definition that are missing or malformed (empty: complete)."""
    bad = []
    if not d.name.isidentifier() or d.name != d.name.lower():
        bad.append("name (a lower-case identifier)")
    if not isinstance(d.layout, Layout):
        bad.append("layout")
    for part in ("rule", "recover"):
        if not callable(getattr(d, part)):
            bad.append(part)
    if d.family != CONTROL:  # control rows are run by the interpreters themselves
        if not callable(d.forward):
            bad.append("forward")
        for part in ("vjp", "jvp"):
            if callable(getattr(d, part)) != d.differentiable:
                bad.append(f"{part} (exactly when differentiable)")
        if not d.samples:
            bad.append("samples")
    elif not d.checked_by:
        bad.append("checked_by (the suite that tests a control op)")
    if not d.front_end:
        bad.append("front_end")
    if d.kernel not in KERNEL_FILES:
        bad.append(f"kernel (one of {', '.join(KERNEL_FILES)})")
    if d.saves not in SAVES:
        bad.append(f"saves (one of {', '.join(SAVES)})")
    if d.int_inputs and not callable(d.int_bound):
        bad.append("int_bound (it has integer operands)")
    return bad


assert len(Op) == len(_DEFS), "two ops share a name or a code: " + ", ".join(
    f"{d.name}={d.code}" for d in _DEFS)
assert all(0 <= d.code % 100 < 100 for d in _DEFS)
_incomplete = {d.name: incomplete(d) for d in _DEFS if incomplete(d)}
assert not _incomplete, f"incomplete op definitions: {_incomplete}"
del _d, _incomplete
