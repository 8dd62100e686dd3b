"""What every op definition is made of: the ``OpDef`` record, the ``Layout`` of its attributes
on the tape, and the shape helpers the shape rules share.

Invariants: nothing here imports the front end, the tape or ``fastgrad.kernels`` (the kernels
import the op codes from this package, so it must load before them); errors are
``FastgradError`` naming the op and the fix.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import numpy as np

from ..core.errors import fail, flag  # noqa: F401 - flag: re-exported for the shape rules

__all__ = ["BINARY_SHAPES", "Fusion", "Layout", "MAX_NDIM", "NO_ATTRS", "OpDef", "Tail",
           "UNARY_SHAPES", "broadcast_shapes", "broadcast_strides", "coalesce",
           "contiguous_strides", "directions", "fail", "flag", "fmt", "int_tuple", "lift",
           "no_attrs", "normalize_axis", "prim", "real", "split_axis", "unbroadcast"]

MAX_NDIM = 32


# ----------------------------------------------------------------------------- shape helpers
def fmt(shape) -> str:
    """A shape as Python prints a tuple: ``fmt((3,)) == "(3,)"``, ``fmt(()) == "()"``."""
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def contiguous_strides(shape):
    """Element strides of a C-contiguous array: ``contiguous_strides((2, 3)) == [3, 1]``."""
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return list(reversed(strides))


def broadcast_shapes(name, *shapes):
    """NumPy's broadcast of ``shapes``: ``broadcast_shapes("add", (3, 1), (4,)) == (3, 4)``."""
    nd = max(len(s) for s in shapes)
    out = []
    for d in range(nd):
        sizes = {s[d - nd + len(s)] for s in shapes if d - nd + len(s) >= 0} - {1}
        if len(sizes) > 1:
            raise fail(
                name,
                "shapes " + " and ".join(fmt(s) for s in shapes) + " do not broadcast",
                "make the sizes equal or 1 in each trailing axis (reshape or add an axis with "
                "x.reshape(...) / x[:, None])",
            )
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def broadcast_strides(shape, out):
    """Element strides that read ``shape`` broadcast to ``out`` (0 along broadcast axes)."""
    cs = contiguous_strides(shape)
    lead = len(out) - len(shape)
    return [0 if d < lead or shape[d - lead] == 1 else cs[d - lead] for d in range(len(out))]


def coalesce(shape, *strides):
    """Drop size-1 axes and merge neighbours that every operand walks contiguously.

    >>> coalesce((3, 4), [4, 1], [0, 1])   # (3, 4) + (4,): the rows cannot merge
    ([3, 4], [[4, 1], [0, 1]])
    """
    dims = [(s, [st[d] for st in strides]) for d, s in enumerate(shape) if s != 1]
    merged = []
    for size, sts in dims:
        if merged:
            psize, psts = merged[-1]
            if all(p == q * size for p, q in zip(psts, sts)):
                merged[-1] = (psize * size, sts)
                continue
        merged.append((size, sts))
    if not merged:
        merged = [(1, [0] * len(strides))]
    return [m[0] for m in merged], [[m[1][i] for m in merged] for i in range(len(strides))]


def normalize_axis(name, axis, ndim):
    """axis in [-k, k) with k = max(ndim, 1), as a non-negative int (a 0-d tensor is seen as
    having one axis of size 1, so axis 0 and -1 both name it)."""
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, (bool, np.bool_)):
        raise fail(name, f"axis must be an int or None, got {axis!r}", "pass axis=int")
    k = max(ndim, 1)
    if not -k <= axis < k:
        raise fail(
            name,
            f"axis {axis} is out of range for a tensor with {ndim} dimension(s)",
            f"use an axis in [{-k}, {k - 1}]",
        )
    return int(axis) % k


def int_tuple(name, what, values, minimum=None):
    """``values`` as a tuple of Python ints (refusing floats, bools, strings, ...)."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, (bool, np.bool_)):
        values = (values,)
    try:
        items = tuple(values)
    except TypeError:
        raise fail(name, f"{what} must be a sequence of ints, got {values!r}",
                   f"pass {what} as a tuple of ints") from None
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
           for v in items):
        raise fail(name, f"{what} must be ints, got {items!r}", f"pass {what} as a tuple of ints")
    items = tuple(int(v) for v in items)
    if minimum is not None and any(v < minimum for v in items):
        raise fail(name, f"{what} {items} has entries below {minimum}",
                   f"use entries >= {minimum}")
    if len(items) > MAX_NDIM:
        raise fail(name, f"{what} has {len(items)} entries", f"use at most {MAX_NDIM} axes")
    return items


def real(name, what, value) -> float:
    """``value`` as a float, refusing strings, None, sequences and complex numbers."""
    if not isinstance(value, (numbers.Real, np.integer, np.floating)):
        raise fail(name, f"{what} must be a real number, got {value!r}", f"pass a float {what}")
    return float(value)


def split_axis(shape, axis):
    """(outer, n, inner) view of ``shape`` around ``axis``: ``split_axis((2, 3, 4), 1) ==
    (2, 3, 4)``, ``split_axis((2, 3, 4), 2) == (6, 4, 1)``."""
    return math.prod(shape[:axis]), (shape[axis] if shape else 1), math.prod(shape[axis + 1 :])


def unbroadcast(g, shape):
    """Sum the gradient ``g`` (at a broadcast shape) back to an operand's ``shape``."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for d, s in enumerate(shape):
        if s == 1 and g.shape[d] != 1:
            g = g.sum(axis=d, keepdims=True)
    return g


def lift(t, nd):
    """A tangent (k, *s) with 1-axes inserted after k so that s is right-aligned to nd axes."""
    k, s = t.shape[0], t.shape[1:]
    return t.reshape((k,) + (1,) * (nd - len(s)) + s)


def prim(x, nd):
    """A primal of shape s as (1, ..., 1, *s): nd + 1 axes, to broadcast against tangents."""
    return x.reshape((1,) * (nd + 1 - x.ndim) + x.shape)


def directions(ts):
    """k, the number of tangent directions carried by the (non-None) tangents ``ts``."""
    return next(t.shape[0] for t in ts if t is not None)


# ----------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Tail:
    """A variable-length run of integer attributes after a layout's fixed fields: ``count``
    items (the value of that fixed field; None: every integer left) of ``width`` integers each,
    named ``items`` when width > 1. Decoded as an int64 array, (count,) or (count, width)."""

    name: str
    count: str | None
    width: int = 1
    items: tuple = ()


@dataclass(frozen=True)
class Layout:
    """How one op's attributes sit in a tape row: named fixed integers ``ints``, then the
    ``tails`` in order, in ``iparams``; named floats ``floats`` in ``fparams``.

    ``decode`` turns a row's raw attributes into a namespace of named fields and refuses a row
    whose lengths do not fit; ``encode`` is its inverse (shape rules build rows with it).
    ``shown`` are the fields ``print(tape)`` writes after a row.

    >>> lay = Layout(ints=("outer", "n", "inner"))
    >>> a = lay.decode([2, 3, 4], [])
    >>> a.outer, a.n, a.inner
    (2, 3, 4)
    >>> lay.encode(**vars(a))
    ([2, 3, 4], [])
    """

    ints: tuple = ()
    floats: tuple = ()
    tails: tuple = ()
    shown: tuple = ()

    def decode(self, ip, fp, name="row") -> SimpleNamespace:
        ip = np.asarray(ip, np.int64).reshape(-1)
        if len(ip) < len(self.ints) or len(fp) != len(self.floats) or \
                (not self.tails and len(ip) != len(self.ints)):
            raise fail(name, f"has {len(ip)} integer and {len(fp)} float attributes; its layout "
                       f"is {self.describe()}", "record the row with its op's shape rule")
        a = SimpleNamespace(**{f: int(v) for f, v in zip(self.ints, ip)})
        for f, v in zip(self.floats, fp):
            setattr(a, f, float(v))
        at = len(self.ints)
        for t in self.tails:
            n = len(ip) - at if t.count is None else getattr(a, t.count)
            if n < 0 or (t.count is None and n % t.width) or at + n * t.width > len(ip):
                raise fail(name, f"has {len(ip)} integer attributes, too few for {t.name} "
                           f"({t.count}={n}); its layout is {self.describe()}",
                           "record the row with its op's shape rule")
            n = n // t.width if t.count is None else n
            run = ip[at : at + n * t.width]
            setattr(a, t.name, run.reshape(n, t.width) if t.width > 1 else run)
            at += n * t.width
        if at != len(ip):
            raise fail(name, f"has {len(ip)} integer attributes; its layout {self.describe()} "
                       f"accounts for {at}", "record the row with its op's shape rule")
        return a

    def head(self, ip) -> SimpleNamespace:
        """The fixed integer fields of ``ip`` alone, for a checker that validates them before
        trusting the tails' counts (``ip`` holds at least ``len(self.ints)`` integers)."""
        return SimpleNamespace(**{f: int(v) for f, v in zip(self.ints, ip)})

    def index(self, name) -> int:
        """Where fixed integer field ``name`` sits in a row's iparams."""
        return self.ints.index(name)

    def encode(self, **values) -> tuple[list, list]:
        """(iparams, fparams) of a row from its named fields (tails as sequences)."""
        known = set(self.ints) | set(self.floats) | {t.name for t in self.tails}
        if set(values) != known:
            raise fail("layout", f"fields {sorted(values)} are not {sorted(known)}",
                       "give every field of the layout, and only those")
        ip = [int(values[f]) for f in self.ints]
        for t in self.tails:
            ip += [int(v) for v in np.asarray(values[t.name], np.int64).reshape(-1)]
        return ip, [float(values[f]) for f in self.floats]

    def describe(self) -> str:
        """The layout in words, e.g. ``[outer, n, inner]`` or ``[ndim, dims x ndim, ...]``."""
        parts = list(self.ints)
        for t in self.tails:
            what = f"({', '.join(t.items)})" if t.items else t.name
            parts.append(f"{what} x {t.count or 'rest'}")
        out = "[" + ", ".join(parts) + "]"
        return out + (f" + floats [{', '.join(self.floats)}]" if self.floats else "")

    def brief(self, a) -> str:
        """The ``shown`` fields of decoded attributes ``a``, e.g. ``{outer=1, n=5, inner=1}``
        (a float field only when it is not 0)."""
        items = [f"{f}={getattr(a, f)}" for f in self.shown
                 if f not in self.floats or getattr(a, f) != 0.0]
        return "{" + ", ".join(items) + "}" if items else ""


NO_ATTRS = Layout()


# ----------------------------------------------------------------------------- the definition
@dataclass(frozen=True)
class OpDef:
    """One primitive op, whole: everything fastgrad knows about it outside the kernels.

    name:        the op's name; ``Op[name.upper()]`` is its code.
    code:        100 * family + index; append-only (saved tapes and compiled kernels hold it).
    arity:       number of operands (-1: one or more).
    rule:        ``rule(name, shapes, **attrs) -> (out_shape, iparams, fparams)``, run at record
                 time: it validates the operands and encodes the attributes with ``layout``.
    layout:      how the attributes sit in the row (``Layout``).
    forward:     NumPy forward ``forward(xs, a, out_shape) -> y`` (``a``: decoded attributes).
    vjp:         NumPy VJP ``vjp(xs, y, g, a) -> [gradient of each operand, or None]``.
    jvp:         ``jvp(xs, ts, y, a) -> tangent (k, *y.shape)``; ``ts[i]`` is None (zero) or
                 (k, *xs[i].shape).
    recover:     ``recover(shapes, out_shape, a) -> [attrs, ...]``: the keyword attributes a
                 loaded row may have been recorded with; the tape validator re-runs ``rule`` on
                 each and requires it to reproduce the row exactly.
    samples:     (input shapes, attrs, domain) triples the generated tests run.
    front_end:   an expression over ``fg, np, x (3, 4), v (4,), labels (3,)`` that records the
                 op through the public API (the reachability test evaluates it).
    kernel:      the kernel family file in ``kernels/`` holding its forward and VJP.
    saves:       what its VJP reads: "inputs", "output" (exp' = y), "nothing", or "other
                 factor" (a product: each factor only for the other's gradient).
    integers:    its NumPy forward is exact on integer and bool operands and keeps their
                 dtype (a sum widening to int64): on integer constants the front end gives
                 integers, as PyTorch's (reshape, sum, +).
    """

    name: str
    code: int
    arity: int
    rule: Callable
    layout: Layout
    forward: Callable | None
    vjp: Callable | None
    jvp: Callable | None
    recover: Callable
    samples: list
    front_end: str
    kernel: str
    differentiable: bool = True
    int_inputs: tuple = ()  # positions of integer (index/label) operands
    int_bound: Callable | None = None  # (shapes, **attrs) -> (lo, hi): valid integer range
    np_forward: Callable | None = None  # elementwise: the plain NumPy function
    np_vjp: Callable | None = None  # elementwise: its plain local gradient(s)
    saves: str = "inputs"
    integers: bool = False
    checked_by: str = ""  # control ops: the suite that tests them instead of samples
    op: object = field(default=None, compare=False)  # the Op member, bound by the registry

    @property
    def family(self) -> int:
        return self.code // 100


@dataclass(frozen=True)
class Fusion:
    """A pattern of the fusion pass (transforms/fusion.py), kept with the fused op it makes.

    chain:  per row of the chain, first to last, the op codes that row may have; each row's
            output is read by the next row alone (and by nothing a caller sees).
    build:  ``build(rows, tools) -> [(stage, op code, operand nodes, attrs), ...] | None``: the
            rows that replace a match, in order, each recorded through its op's shape rule at
            the place of chain row ``stage`` and writing that row's output node (the last one
            the chain's output), or None where the match does not fit. ``rows[i]`` has
            ``row, op, inputs, out, attrs`` and ``link`` (which operand is the previous row's
            output); ``tools.shape(v)`` is node v's shape and
            ``tools.transposed(v)`` the node that v is the matrix transpose of (or -1).
    samples: front-end expressions that record a chain this pattern fuses, over ``fg``,
            ``x`` (6, 4), ``w`` (5, 4), ``wt`` (4, 5), ``b`` (5,) and ``c`` (6, 5) (the
            generated tests compile each with and without the pass and compare).
    """

    name: str
    chain: tuple
    build: Callable
    samples: tuple = ()


def no_attrs(shapes, out_shape, a):
    """``recover`` of a rule that takes no attributes: the shapes decide everything."""
    return [{}]


UNARY_SHAPES = [(), (5,), (3, 4), (2, 3, 4)]
BINARY_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((), (2, 3)),
                 ((2, 1, 3), (4, 1)), ((5,), ())]
