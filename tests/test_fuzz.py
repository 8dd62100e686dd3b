"""Fuzzing the recorder: random graphs over the WHOLE op table, valid and invalid.

Every generated case must end one of two ways:
  * it records, and then its forward values match an independent NumPy oracle (per op, on the
    actual operand values) and the NumPy reference interpreter (per tape), the recorded tape
    passes ``fastgrad.io.validate_tape`` (the check a loaded tape passes), and in float64 its
    gradients pass ``gradcheck``;
  * or it raises ``FastgradError`` whose message starts with the op's name.
Anything else (another exception, a crash, a hang, a NumPy/Numba error from a kernel) fails.
Inputs known to be invalid (bad dtypes, out-of-range axes and indices, unknown attributes,
wrong operand counts, huge outputs) must raise.

Ops are drawn from ``fastgrad.ops.TABLE``, so a new op is fuzzed without touching this file
(generic generators work from its table samples, shape rule signature and integer operands).

Profiles: ``FASTGRAD_FUZZ=ci`` (default, bounded, derandomized) or ``FASTGRAD_FUZZ=long``.
The number of cases and their outcomes is printed in pytest's terminal summary.
"""

from __future__ import annotations

import collections
import importlib
import inspect
import math
import os
import warnings

import numpy as np
import pytest
import scipy.special
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_trust_files import _relabel_consistently

import fastgrad as fg
from fastgrad import FastgradError
from fastgrad.gradcheck import GradcheckError, numerical_grad
from fastgrad.io import validate_tape
from fastgrad.io.tapes import tape_from_arrays as _tape_from, tape_to_arrays as _tape_to
from fastgrad.ops import BINARY, CONTROL, REDUCE, TABLE, UNARY, WHERE, Op
from fastgrad.reference import Reference
from fastgrad.tensor import Tensor, apply

# the ops whose results on integer constants are integers, as PyTorch's (OpDef.integers)
INTEGER_OPS = {op for op, d in TABLE.items() if d.integers}

_HEALTH = list(HealthCheck)
settings.register_profile("fuzz-ci", max_examples=400, deadline=None, derandomize=True,
                          database=None, suppress_health_check=_HEALTH, print_blob=True)
settings.register_profile("fuzz-long", max_examples=10_000, deadline=None, database=None,
                          suppress_health_check=_HEALTH, print_blob=True)
settings.register_profile("fuzz-dev", settings.get_profile("fuzz-ci"), max_examples=400,
                          derandomize=False, phases=[Phase.explicit, Phase.generate])
PROFILE = settings.get_profile("fuzz-" + os.environ.get("FASTGRAD_FUZZ", "ci"))


def fuzz(weight=1.0):
    return settings(PROFILE, max_examples=max(1, int(PROFILE.max_examples * weight)))


OPS = list(TABLE)  # the whole table, control ops included (they must refuse apply())
COUNTS: collections.Counter = collections.Counter()
SEEN: dict = {"recorded": set(), "refused": set()}  # op names, for the summary
MEMORY_LIMIT = 1 << 30  # huge outputs must be refused before allocation


class _Summary:
    def pytest_terminal_summary(self, terminalreporter):
        if not COUNTS:
            return
        terminalreporter.write_sep("-", f"fastgrad fuzz ({os.environ.get('FASTGRAD_FUZZ', 'ci')}"
                                   " profile)")
        for key in sorted(COUNTS):
            terminalreporter.write_line(f"{COUNTS[key]:8d}  {key}")
        names = {d.name for d in TABLE.values()}
        for how, ops in SEEN.items():
            missing = sorted(names - ops)
            terminalreporter.write_line(f"{len(ops & names):8d}  of {len(names)} ops {how} at "
                                        "least once" + (f" (not: {', '.join(missing)})"
                                                        if missing else ""))


@pytest.fixture(scope="module", autouse=True)
def _fuzz_session(request):
    request.config.pluginmanager.register(_Summary(), "fastgrad-fuzz-summary")
    old = importlib.import_module("fastgrad.memory").memory_limit()
    fg.set_memory_limit(MEMORY_LIMIT)
    yield
    fg.set_memory_limit(old)
    print("\nfastgrad fuzz:", dict(sorted(COUNTS.items())))


# ----------------------------------------------------------------------------- the oracle
def _rule_params(d):
    return [p for p in inspect.signature(d.rule).parameters.values()
            if p.kind == p.KEYWORD_ONLY or p.default is not p.empty]


def oracle(op, xs, attrs, dtype):
    """What NumPy says ``apply(op, *xs, **attrs)`` computes, in float64 from the (cast) operand
    values; None when there is no independent oracle (then the reference interpreter checks)."""
    d, fam = TABLE[op], op // 100
    f = [x.astype(np.float64) if i not in d.int_inputs else x for i, x in enumerate(xs)]
    if fam == UNARY:
        c0 = float(dtype.type(attrs.get("c0", 0.0)))
        c1 = float(dtype.type(attrs.get("c1", 0.0)))
        with np.errstate(all="ignore"):
            return d.np_forward(f[0], c0, c1)
    if fam == BINARY:
        with np.errstate(all="ignore"):
            return d.np_forward(f[0], f[1])
    if fam == WHERE:
        return np.where(f[0] != 0, f[1], f[2])
    x = f[0]
    if op in (Op.SUM, Op.MAX):
        axis, keep = attrs.get("axis"), attrs.get("keepdims", False)
        if x.ndim == 0:  # a 0-d tensor reduces over its one virtual axis
            return x.copy()
        return (np.sum if op == Op.SUM else np.max)(x, axis=axis, keepdims=bool(keep))
    if op in (Op.SOFTMAX, Op.LOG_SOFTMAX):
        if x.ndim == 0:
            return np.float64(1.0 if op == Op.SOFTMAX else 0.0)
        if x.size == 0:
            return x.copy()
        fn = scipy.special.softmax if op == Op.SOFTMAX else scipy.special.log_softmax
        with np.errstate(all="ignore"):
            return fn(x, axis=attrs.get("axis", -1))
    if op == Op.MATMUL:
        b = np.swapaxes(f[1], -1, -2) if attrs.get("trans_b") else f[1]
        return np.matmul(x, b)
    if d.name == "linear":
        return np.matmul(x, f[1].T if attrs.get("trans_b", True) else f[1]) + f[2]
    if op == Op.RESHAPE:
        return x.reshape(attrs["shape"])
    if op == Op.STRIDED:
        shape, strides = attrs["out_shape"], attrs["strides"]
        idx = np.full(shape, attrs["base"], np.int64)
        for axis, stride in enumerate(strides):  # offset = base + sum_d i_d * stride_d
            idx += stride * np.indices(shape, np.int64)[axis]
        return x.reshape(-1)[idx]
    if op == Op.GATHER:
        return np.take(x, xs[1], axis=attrs.get("axis", 0))
    if op == Op.CONCAT:
        return np.concatenate(f, axis=attrs.get("axis", 0))
    if op == Op.CROSS_ENTROPY:
        with np.errstate(all="ignore"):
            lsm = scipy.special.log_softmax(x, axis=1) if x.size else x
        return -lsm[np.arange(x.shape[0]), xs[1]]
    return None


def assert_close(got, want, dtype, inputs, what):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs NumPy {want.shape}"
    scale = 1.0
    for a in [want, *inputs]:
        a = np.asarray(a, np.float64)
        fin = np.abs(a[np.isfinite(a)])
        if fin.size:
            scale = max(scale, float(fin.max()))
    tol = 1e-9 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, equal_nan=True,
                               err_msg=what)


class _Reference(Reference):
    """The reference interpreter, with two empty cases it cannot run defined: softmax over an
    empty axis (NumPy's max raises; the kernels return the empty result, as tests/test_errors.py
    pins) and concatenating pieces with zero rows (reshape(0, -1) is ambiguous in NumPy)."""

    def forward_row(self, d, xs, a, out_shape):
        if d.op in (Op.SOFTMAX, Op.LOG_SOFTMAX) and xs[0].size == 0:
            return xs[0].reshape(out_shape)
        if d.op == Op.CONCAT and math.prod(out_shape) == 0:
            return np.zeros(out_shape, xs[0].dtype)
        return super().forward_row(d, xs, a, out_shape)


# ----------------------------------------------------------------------------- graphs
SIDE = 4
BAD_DTYPES = [np.float16, np.complex128, object, "U2", "datetime64[s]"]


class Graph:
    """A random program over the op table, executed step by step as it is drawn.

    Operand refs: ("leaf", j) a differentiable input, ("out", i) the result of step i,
    ("const", array) a constant array passed as is (indices, masks, bad dtypes...).
    """

    def __init__(self, data):
        self.data = data
        self.dtype = np.dtype(data.draw(st.sampled_from([np.float64, np.float64, np.float32]),
                                        "dtype"))
        self.grad = data.draw(st.sampled_from([True, True, True, False]), "requires_grad")
        self.rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), "seed"))
        self.leaves: list[np.ndarray] = []
        self.outs: list = []  # (ref, shape) of step results usable as operands
        self.env: dict = {}
        self.steps: list = []  # (op, refs, attrs) that recorded

    def draw(self, strategy, label=None):
        return self.data.draw(strategy, label)

    # ---- operands
    def shape(self, min_dims=0, max_dims=3):
        return self.draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0,
                                          max_side=SIDE))

    def leaf(self, shape, domain="real"):
        n = math.prod(shape)
        if domain == "positive":
            a = self.rng.uniform(0.25, 2.0, n)
        else:
            a = self.rng.uniform(0.25, 2.0, n) * self.rng.choice([-1.0, 1.0], n)
        a = a.reshape(shape).astype(self.dtype)
        self.leaves.append(a)
        ref = ("leaf", len(self.leaves) - 1)
        self.env[ref] = fg.tensor(a, requires_grad=self.grad)
        return ref

    def pool(self):
        return [(("leaf", j), a.shape) for j, a in enumerate(self.leaves)] + self.outs

    def pick(self, shape=None, min_dims=0, domain="real", pred=None):
        """An existing float tensor (of ``shape`` / satisfying ``pred``) or a new leaf."""
        cands = [r for r, s in self.pool() if (shape is None or s == tuple(shape))
                 and len(s) >= min_dims and (pred is None or pred(s))]
        if cands and (pred is not None or self.draw(st.booleans(), "reuse")):
            return self.draw(st.sampled_from(cands), "operand")
        if pred is not None:
            return None
        return self.leaf(tuple(shape) if shape is not None else self.shape(min_dims), domain)

    def shape_of(self, ref):
        return tuple(np.shape(ref[1])) if ref[0] == "const" else self.env[ref].shape

    def values(self, ref):
        return np.asarray(ref[1]) if ref[0] == "const" else np.asarray(self.env[ref].numpy())

    def broadcastable(self, shape):
        shape = list(shape)
        how = self.draw(st.sampled_from(["same", "ones", "drop", "prepend", "scalar"]), "bcast")
        if how == "ones" and shape:
            return tuple(1 if self.draw(st.booleans()) else s for s in shape)
        if how == "drop" and shape:
            return tuple(shape[self.draw(st.integers(0, len(shape))):])
        if how == "prepend":
            return tuple(self.draw(st.lists(st.integers(1, 3), max_size=2))) + tuple(shape)
        if how == "scalar":
            return ()
        return tuple(shape)

    # ---- one step
    def step(self, op):
        d = TABLE[op]
        refs, attrs, must_fail, why = self.generate(op)
        if self.draw(st.sampled_from([False] * 7 + [True] * 3), "mutate?"):
            refs, attrs, must_fail, why = self.mutate(op, refs, attrs, must_fail, why)
        note(f"step: {d.name} refs={[r[0] if r[0] == 'const' else r for r in refs]} "
             f"attrs={attrs} ({why})")
        COUNTS["steps"] += 1
        args = [r[1] if r[0] == "const" else self.env[r] for r in refs]
        try:
            y = apply(op, *args, **attrs)
        except FastgradError as e:
            assert str(e).startswith(d.name + ":"), f"error does not name {d.name}: {e}"
            COUNTS[f"steps refused ({'invalid input' if must_fail else 'by a shape rule'})"] += 1
            SEEN["refused"].add(d.name)
            return
        assert not must_fail, f"{d.name} accepted invalid input ({why}): {attrs}"
        COUNTS["steps recorded"] += 1
        SEEN["recorded"].add(d.name)
        self.check_step(op, refs, attrs, y)
        ref = ("out", len(self.steps))
        self.steps.append((op, refs, attrs))
        self.env[ref] = y
        if y.dtype == self.dtype:
            self.outs.append((ref, y.shape))

    def check_step(self, op, refs, attrs, y):
        d = TABLE[op]
        floats = {self.values(r).dtype for pos, r in enumerate(refs)
                  if pos not in d.int_inputs and self.values(r).dtype.kind == "f"}
        if not floats and y.dtype.kind in "iub":
            # integer constants stay integers under the ops exact on them, as PyTorch's
            assert op in INTEGER_OPS, f"{d.name} gave {y.dtype} for integer operands"
            xs = [self.values(r).astype(np.float64) for r in refs]
            want = oracle(op, xs, attrs, np.dtype(np.float64))
            if want is not None:
                np.testing.assert_array_equal(y.numpy(), want, f"{d.name} on integers")
            return
        dtype = floats.pop() if floats else fg.get_default_dtype()  # ints alone: the default
        assert y.dtype == dtype, f"{d.name} gave {y.dtype} for operands in {dtype}"
        xs = []
        for pos, r in enumerate(refs):
            v = self.values(r)
            xs.append(v.astype(np.int64) if pos in d.int_inputs else v.astype(dtype))
        want = oracle(op, xs, attrs, dtype)
        if want is not None:
            COUNTS["forward checked against the NumPy oracle"] += 1
            assert_close(y.numpy(), want, dtype, xs, f"{d.name} forward vs NumPy")

    # ---- generators: valid-leaning operands and attributes for each family
    def generate(self, op):
        d, fam = TABLE[op], op // 100
        dom = d.samples[0][2] if d.samples else "real"
        if fam == UNARY:
            attrs = dict(d.samples[0][1]) if d.samples else {}
            if self.draw(st.booleans(), "new constant"):
                attrs["c0"] = self.draw(st.sampled_from([-2.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0]))
            return [self.pick(domain=dom)], attrs, False, "unary"
        if fam == BINARY:
            a = self.pick(domain=dom)
            b = self.pick(self.broadcastable(self.shape_of(a)), domain=dom)
            return ([a, b] if self.draw(st.booleans()) else [b, a]), {}, False, "broadcast"
        if fam == WHERE:
            a = self.pick()
            s = self.shape_of(a)
            cond = ("const", (self.rng.uniform(size=self.broadcastable(s)) > 0.5)
                    .astype(self.dtype))
            return [cond, a, self.pick(self.broadcastable(s))], {}, False, "where"
        if fam == REDUCE:
            x = self.pick()
            nd = len(self.shape_of(x))
            attrs = {}
            if op in (Op.SUM, Op.MAX):
                attrs["keepdims"] = self.draw(st.booleans())
                if nd and self.draw(st.booleans()):
                    attrs["axis"] = self.draw(st.integers(-nd, nd - 1))
                if op == Op.MAX and 0 in self.shape_of(x):
                    return [x], attrs, False, "max over an empty tensor"
            elif nd and self.draw(st.booleans()):
                attrs["axis"] = self.draw(st.integers(-nd, nd - 1))
            return [x], attrs, False, "reduce"
        if op == Op.MATMUL:
            a = self.pick(min_dims=2)
            sa = self.shape_of(a)
            m_k = sa[-2:]
            n = self.draw(st.integers(0, SIDE))
            tb = self.draw(st.booleans())
            batch = self.broadcastable(sa[:-2])
            sb = batch + ((n, m_k[1]) if tb else (m_k[1], n))
            return [a, self.pick(sb)], {"trans_b": tb}, False, "matmul"
        if op == Op.RESHAPE:
            x = self.pick()
            s = self.shape_of(x)
            return [x], {"shape": self.reshaped(s)}, False, "reshape"
        if op == Op.STRIDED:
            x = self.pick()
            size = math.prod(self.shape_of(x))
            out = self.shape(0, 3)
            strides = tuple(self.draw(st.integers(-size - 1, size + 1)) for _ in out)
            lo = sum(min(0, (k - 1) * s) for k, s in zip(out, strides))
            hi = sum(max(0, (k - 1) * s) for k, s in zip(out, strides))
            empty = math.prod(out) == 0
            if empty or -lo <= size - 1 - hi:
                base = self.draw(st.integers(-lo, max(-lo, size - 1 - hi)))
                return [x], dict(out_shape=out, base=base, strides=strides), False, "view"
            base = self.draw(st.integers(-2, size + 2))
            return [x], dict(out_shape=out, base=base, strides=strides), True, "view outside"
        if op == Op.GATHER:
            x = self.pick(min_dims=1)
            s = self.shape_of(x)
            axis = self.draw(st.integers(-len(s), len(s) - 1))
            n = s[axis]
            ishape = self.shape(0, 2)
            idx = self.rng.integers(-n, n, ishape) if n else np.zeros(ishape, np.int64)
            bad = n == 0 and idx.size > 0
            return [x, ("const", idx)], {"axis": axis}, bad, "gather"
        if op == Op.CONCAT:
            x = self.pick(min_dims=1)
            s = self.shape_of(x)
            axis = self.draw(st.integers(-len(s), len(s) - 1))
            refs = [x]
            for _ in range(self.draw(st.integers(0, 2))):
                t = list(s)
                t[axis] = self.draw(st.integers(0, 3))
                refs.append(self.pick(tuple(t)))
            return refs, {"axis": axis}, False, "concat"
        if op == Op.CROSS_ENTROPY:
            n, c = self.draw(st.integers(0, SIDE)), self.draw(st.integers(1, SIDE))
            logits = (self.draw(st.booleans()) and self.pick(
                pred=lambda s: len(s) == 2 and s[1] > 0)) or self.leaf((n, c))
            n, c = self.shape_of(logits)
            return [logits, ("const", self.rng.integers(0, c, n))], {}, False, "loss"
        if fam == CONTROL:
            refs = [self.pick() for _ in range(self.draw(st.integers(1, 2)))]
            return refs, {}, True, "control ops are recorded by fg.scan only"
        # an op of a family this file does not know: its table samples
        shapes, attrs, domain = self.draw(st.sampled_from(d.samples), "sample")
        refs = []
        for pos, s in enumerate(shapes):
            if pos in d.int_inputs:
                lo, hi = d.int_bound([tuple(t) for t in shapes], **attrs)
                refs.append(("const", self.rng.integers(lo, hi, s)))
            else:
                refs.append(self.pick(tuple(s), domain=domain))
        return refs, dict(attrs), False, "table sample"

    def reshaped(self, shape):
        size = math.prod(shape)
        dims = []
        rest = size
        for _ in range(self.draw(st.integers(0, 3))):
            divisors = [k for k in range(1, SIDE + 1) if rest % k == 0] if rest else [0, 1, 2]
            k = self.draw(st.sampled_from(divisors))
            dims.append(k)
            rest = rest // k if k else rest
        if size and rest != 1 or not size and 0 not in dims:
            dims.append(rest if size else 0)
        if size and dims and self.draw(st.booleans()):
            dims[self.draw(st.integers(0, len(dims) - 1))] = -1
        return tuple(dims)

    # ---- mutations: invalid (or unusual) inputs
    def mutate(self, op, refs, attrs, must_fail, why):
        d, fam = TABLE[op], op // 100
        params = {p.name for p in _rule_params(d)}
        float_pos = [i for i in range(len(refs)) if i not in d.int_inputs]
        kinds = ["unknown attribute", "arity", "bad dtype", "int as float", "shape"]
        if len(float_pos) >= 2:
            kinds.append("mixed float dtypes")
        if d.int_inputs:
            kinds += ["index out of range", "float index", "unsigned overflow index"]
        if "axis" in params:
            kinds += ["axis out of range", "axis type"]
        if "c0" in params:
            kinds.append("bad scalar")
        if "shape" in params:
            kinds.append("bad target shape")
        if "out_shape" in params:
            kinds.append("bad view")
        if fam in (BINARY, WHERE) or op in (Op.MATMUL, Op.STRIDED, Op.GATHER):
            kinds.append("huge output")
        kind = self.draw(st.sampled_from(kinds), "mutation")
        refs, attrs = list(refs), dict(attrs)
        if kind == "unknown attribute":
            attrs["bogus"] = 1
            return refs, attrs, True, kind
        if kind == "arity":
            if d.arity < 0:
                return [], attrs, True, kind
            if self.draw(st.booleans()) or len(refs) == 1:
                return refs + [self.pick()], attrs, True, kind
            return refs[:-1], attrs, True, kind
        if kind == "bad dtype":
            pos = self.draw(st.sampled_from(float_pos))
            bad = self.draw(st.sampled_from(BAD_DTYPES))
            refs[pos] = ("const", np.zeros(self.shape_of(refs[pos]), dtype=bad))
            return refs, attrs, True, f"{kind} {np.dtype(bad)}"
        if kind == "int as float":  # ints and bools in a float position are cast, as NumPy
            pos = self.draw(st.sampled_from(float_pos))
            t = self.draw(st.sampled_from([np.int64, np.uint8, np.bool_]))
            v = np.nan_to_num(self.values(refs[pos]), nan=0.0, posinf=7.0, neginf=-7.0)
            refs[pos] = ("const", (np.abs(v).clip(0, 100) + 1).astype(t))
            return refs, attrs, must_fail, kind
        if kind == "mixed float dtypes":
            other = np.float32 if self.dtype == np.float64 else np.float64
            pos = self.draw(st.sampled_from(float_pos))
            refs[pos] = ("const", self.values(refs[pos]).astype(other))
            return refs, attrs, True, kind
        if kind == "shape":
            pos = self.draw(st.sampled_from(float_pos))
            s = list(self.shape_of(refs[pos]))
            how = self.draw(st.sampled_from(["grow", "shrink", "zero", "add", "drop"]))
            if s and how in ("grow", "shrink", "zero"):
                i = self.draw(st.integers(0, len(s) - 1))
                s[i] = {"grow": s[i] + 1, "shrink": max(s[i] - 1, 0), "zero": 0}[how]
            elif how == "add" or not s:
                s.insert(0, self.draw(st.integers(0, 3)))
            else:
                s.pop(0)
            refs[pos] = self.leaf(tuple(s))
            return refs, attrs, False, kind  # valid or not: either outcome is allowed
        if kind in ("index out of range", "float index", "unsigned overflow index"):
            pos = d.int_inputs[0]
            shapes = [self.shape_of(r) for r in refs]
            idx = np.array(self.values(refs[pos]), np.int64, copy=True)
            if kind == "float index":
                refs[pos] = ("const", idx.astype(self.draw(st.sampled_from([np.float64,
                                                                            np.bool_]))))
                return refs, attrs, True, kind
            try:
                lo, hi = d.int_bound(shapes, **attrs)
            except FastgradError:
                return refs, attrs, must_fail, kind + " (no bound)"
            if idx.size == 0:
                idx = np.zeros((1,) * max(idx.ndim, 1), np.int64)
                if op == Op.CROSS_ENTROPY:
                    return refs, attrs, must_fail, kind + " (empty)"
            flat = idx.reshape(-1)
            if kind == "unsigned overflow index":
                idx = idx.astype(np.uint64)
                idx.reshape(-1)[0] = np.uint64(2**64 - 1)  # -1 if it wrapped to int64
            else:
                flat[self.draw(st.integers(0, flat.size - 1))] = self.draw(
                    st.sampled_from([hi, hi + 3, lo - 1, lo - 7, 2**40, -(2**40)]))
            refs[pos] = ("const", idx)
            return refs, attrs, True, kind
        if kind == "axis out of range":
            nd = len(self.shape_of(refs[0]))
            k = max(nd, 1)
            attrs["axis"] = self.draw(st.sampled_from([k, k + 2, -k - 1, -k - 5]))
            return refs, attrs, True, kind
        if kind == "axis type":
            attrs["axis"] = self.draw(st.sampled_from([1.0, "0", True, [0], (0,)]))
            if op in (Op.SUM, Op.MAX) and isinstance(attrs["axis"], tuple):
                attrs["axis"] = 0.5
            return refs, attrs, True, kind
        if kind == "bad scalar":
            attrs["c0"] = self.draw(st.sampled_from(["abc", None, [1.0, 2.0], 1 + 2j]))
            return refs, attrs, True, kind
        if kind == "bad target shape":
            s = list(attrs.get("shape", ()))
            how = self.draw(st.sampled_from(["float", "str", "two -1", "neg", "size"]))
            if how == "float":
                s = s + [1.5]
            elif how == "str":
                s = s + ["2"]
            elif how == "two -1":
                s = s + [-1, -1]
            elif how == "neg":
                s = s + [-3]
            else:
                s = s + [math.prod(self.shape_of(refs[0])) + 1]
                if math.prod(self.shape_of(refs[0])) == 0:
                    s = [7]
            attrs["shape"] = tuple(s)
            return refs, attrs, True, f"{kind} ({how})"
        if kind == "bad view":
            how = self.draw(st.sampled_from(["negative size", "strides length", "float base",
                                             "base outside"]))
            out = list(attrs["out_shape"])
            if how == "negative size":
                attrs["out_shape"] = tuple(out + [-2])
                attrs["strides"] = tuple(attrs["strides"]) + (1,)
            elif how == "strides length":
                attrs["strides"] = tuple(attrs["strides"]) + (1,)
            elif how == "float base":
                attrs["base"] = 0.5
            else:
                attrs["out_shape"] = tuple(out) + (2,)
                attrs["strides"] = tuple(attrs["strides"]) + (1,)
                attrs["base"] = math.prod(self.shape_of(refs[0])) + 1
            return refs, attrs, True, f"{kind} ({how})"
        if kind == "huge output":
            # constants, not leaves: the step must fail, and gradcheck must not loop over them
            def const(shape):
                return ("const", np.ones(shape, self.dtype))

            big = 1 << 16
            if fam in (BINARY, WHERE):
                refs[-2:] = [const((big, 1)), const((1, big))]
            elif op == Op.MATMUL:
                refs = [const((1 << 12, 1, 1, 2)), const((1, 1 << 12, 2, 1))]
                attrs = {"trans_b": False}
            elif op == Op.STRIDED:
                refs = [const((1,))]
                attrs = dict(out_shape=(1 << 20, 1 << 20), base=0, strides=(0, 0))
            else:  # gather: 1024 rows of a wide tensor
                refs = [const((2, 1 << 20)), ("const", np.zeros(1 << 10, np.int64))]
                attrs = {"axis": 0}
            return refs, attrs, True, kind
        raise AssertionError(kind)

    # ---- whole-graph checks
    def tapes(self):
        seen = []
        for ref in list(self.env):
            t = self.env[ref]
            if isinstance(t, Tensor) and t.tape is not None and t.tape not in seen:
                seen.append(t.tape)
        return seen

    def check_tapes(self):
        for tape in self.tapes():
            validate_tape(tape)
            COUNTS["tapes validated (load-time checker)"] += 1
            tape.flush()
            ref = _Reference(tape)
            with np.errstate(all="ignore"):
                ref.forward()
            for r, name, ins, o in tape.rows():
                got = tape.node_values(o)
                assert_close(got, ref.node(o), self.dtype,
                             [ref.node(i) for i in ins if tape.node_kind.a[i] == 0],
                             f"row {r} ({name}) vs the reference interpreter")
            COUNTS["tapes checked against the reference interpreter"] += 1

    def replay(self, leaves):
        """The recorded steps again, on new leaf tensors; returns a scalar loss."""
        env = {("leaf", j): t for j, t in enumerate(leaves)}
        loss = None
        for i, (op, refs, attrs) in enumerate(self.steps):
            args = [r[1] if r[0] == "const" else env[r] for r in refs]
            y = apply(op, *args, **attrs)
            env[("out", i)] = y
            if i in self.weights:
                w = self.weights[i]
                term = (y * w).sum()
                loss = term if loss is None else loss + term
        zero = sum(t.sum() * 0.0 for t in leaves)  # every leaf takes part (zero gradient)
        return zero if loss is None else loss + zero

    def check_gradients(self):
        if self.dtype != np.float64 or not self.grad or not self.steps or not self.leaves:
            return
        outs = [self.env[("out", i)] for i in range(len(self.steps))]
        if not any(t.requires_grad for t in outs):
            return
        vals = [np.asarray(t.numpy()) for t in outs]
        if not all(np.isfinite(v).all() and (np.abs(v).max(initial=0) < 1e6) for v in vals):
            COUNTS["gradcheck skipped (non-finite or huge values)"] += 1
            return
        self.weights = {i: self.rng.uniform(0.5, 1.5, v.shape) for i, (t, v) in
                        enumerate(zip(outs, vals)) if t.requires_grad and v.size}
        try:
            fg.gradcheck(lambda *ts: self.replay(ts), self.leaves)
            COUNTS["gradients checked against finite differences"] += 1
        except GradcheckError:
            # A kink (relu at 0, max ties, clip bounds) within eps of the point? Then central
            # differences at two step sizes disagree with each other; otherwise it is a bug.
            arrays = [np.array(a, np.float64) for a in self.leaves]

            def fn(*ts):
                return self.replay(ts)

            for i in range(len(arrays)):
                a = numerical_grad(fn, arrays, i, 1e-6)
                b = numerical_grad(fn, arrays, i, 1e-4)
                if not np.allclose(a, b, rtol=1e-3, atol=1e-4):
                    COUNTS["gradcheck skipped (non-smooth point)"] += 1
                    return
            raise


@fuzz()
@given(st.data())
def test_random_graphs_over_the_whole_op_table(data):
    g = Graph(data)
    for _ in range(data.draw(st.sampled_from([1, 2, 3, 4, 5]), "steps")):
        g.step(data.draw(st.sampled_from(OPS), "op"))
    g.check_tapes()
    g.check_gradients()
    COUNTS["graphs"] += 1


# ----------------------------------------------------------------------------- front end
def _key_part(draw, n, advanced=True):
    basic = ["int", "slice", "slice", "None", "...", "np.int"]
    kind = draw(st.sampled_from(basic + (["array", "list", "bool array", "float"] if advanced
                                         else ["float"])))
    if kind in ("int", "np.int"):
        k = draw(st.integers(-n - 2, n + 1))
        return np.int64(k) if kind == "np.int" else k
    if kind == "slice":
        bound = st.one_of(st.none(), st.integers(-6, 6))
        return slice(draw(bound), draw(bound), draw(st.sampled_from([None, 1, 2, -1, -2, 3, 0])))
    if kind == "None":
        return None
    if kind == "...":
        return Ellipsis
    if kind == "array":
        return np.array(draw(st.lists(st.integers(-n - 1, n), max_size=3)), np.int64)
    if kind == "list":
        return draw(st.lists(st.integers(-n - 1, n), max_size=3))
    if kind == "bool array":
        return np.array(draw(st.lists(st.booleans(), min_size=max(n, 0), max_size=max(n, 0))),
                        bool)
    return 1.5


@fuzz(0.75)
@given(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4), st.data())
def test_indexing_matches_numpy_or_refuses(shape, data):
    """x[key] for random keys: NumPy's values and gradients, or a FastgradError; never a lie
    (NumPy refusing a key fastgrad accepts) and never another exception."""
    n = shape[0] if shape else 0
    if data.draw(st.booleans()):
        key = _key_part(data.draw, n)
    else:  # a tuple: mostly basic indices (mixing with an array is refused)
        parts = [_key_part(data.draw, n, data.draw(st.sampled_from([False] * 4 + [True])))
                 for _ in range(data.draw(st.integers(0, 3)))]
        key = tuple(parts)
    note(f"key={key!r}")
    a = np.random.default_rng(0).standard_normal(shape)
    try:
        want = a[key]
        np_error = None
    except (IndexError, TypeError, ValueError) as e:
        want, np_error = None, e
    x = fg.tensor(a, requires_grad=True)
    COUNTS["indexing cases"] += 1
    try:
        y = x[key]
    except FastgradError as e:
        assert str(e).split(":")[0] in ("getitem", "gather", "strided"), e
        COUNTS["indexing cases refused"] += 1
        return
    assert np_error is None, f"fastgrad accepted a key NumPy refuses ({np_error})"
    np.testing.assert_array_equal(y.numpy(), want)
    w = np.random.default_rng(1).uniform(0.5, 1.5, y.shape)
    (y * w).sum().backward()
    index_of = np.arange(a.size).reshape(shape)[key]
    expected = np.bincount(np.ravel(index_of), weights=np.ravel(w) if w.size else None,
                           minlength=a.size).reshape(shape)
    np.testing.assert_allclose(x.grad, expected, rtol=1e-12, atol=1e-12)
    COUNTS["indexing cases matched NumPy"] += 1


@fuzz(0.75)
@given(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4), st.data())
def test_front_end_compositions_match_numpy_or_refuse(shape, data):
    """transpose, broadcast_to, tuple-axis reductions, stack, take, reshape and mean with random
    (also invalid) arguments: NumPy's result or a FastgradError, never another exception."""
    nd = len(shape)
    a = np.random.default_rng(2).standard_normal(shape)
    valid = data.draw(st.booleans(), "valid-leaning")
    k = max(nd, 1)
    ax = st.integers(-k, k - 1) if valid else st.integers(-nd - 2, nd + 1)
    fn = data.draw(st.sampled_from(["transpose", "broadcast_to", "sum", "max", "mean", "stack",
                                    "take", "reshape"]))
    if fn == "transpose":
        arg = tuple(data.draw(st.permutations(range(nd)) if valid else
                              st.lists(ax, max_size=nd + 1)))
        call = (lambda m, v: m.transpose(v, arg)), (lambda t, v: t.transpose(arg))
    elif fn == "broadcast_to":
        if valid:  # a source with some axes of size 1, broadcast to (prefix..., shape...)
            a = np.random.default_rng(2).standard_normal(
                tuple(1 if data.draw(st.booleans()) else s for s in shape))
            arg = tuple(data.draw(st.lists(st.integers(0, 3), max_size=2))) + tuple(shape)
        else:
            arg = tuple(data.draw(st.lists(st.integers(-1, 4), max_size=4)))
        call = (lambda m, v: np.broadcast_to(v, arg)), (lambda t, v: fg.broadcast_to(t, arg))
    elif fn in ("sum", "max", "mean"):
        arg = tuple(data.draw(st.lists(ax, min_size=1, max_size=3, unique=valid)))
        keep = data.draw(st.booleans())
        call = (lambda m, v: getattr(m, fn)(v, axis=arg, keepdims=keep)), \
            (lambda t, v: getattr(t, fn)(axis=arg, keepdims=keep))
    elif fn == "stack":
        arg = data.draw(st.integers(-nd - 2, nd + 1))
        call = (lambda m, v: m.stack([v, v * 2], axis=arg)), \
            (lambda t, v: fg.stack([t, t * 2], axis=arg))
    elif fn == "take":
        arg = data.draw(ax)
        n = shape[arg] if valid and nd else 4
        idx = np.array(data.draw(st.lists(st.integers(-n, n - 1), max_size=3) if n else
                                 st.just([])), np.int64)
        call = (lambda m, v: m.take(v, idx, axis=arg)), (lambda t, v: fg.take(t, idx, arg))
    else:
        size = math.prod(shape)
        arg = data.draw(st.sampled_from([(-1,), (size,), (1, size, 1), tuple(reversed(shape))])
                        if valid else st.lists(st.integers(-2, 5), max_size=3).map(tuple))
        call = (lambda m, v: v.reshape(arg)), (lambda t, v: t.reshape(arg))
    note(f"{fn} {arg!r}")
    COUNTS["composition cases"] += 1
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty slice: NaN
            want = call[0](np, a)
        np_error = None
    except (ValueError, TypeError, IndexError, np.exceptions.AxisError) as e:
        want, np_error = None, e
    if fn == "take" and nd == 0:
        np_error = np_error or "take of a 0-d array"  # NumPy flattens; fastgrad refuses
    try:
        y = call[1](fg.tensor(a), a)
    except FastgradError as e:
        COUNTS["composition cases refused"] += 1
        assert ":" in str(e)
        return
    if fn in ("sum", "max", "mean") and nd == 0:
        np_error = None  # a 0-d tensor reduces over its one virtual axis
        want = a
    assert np_error is None, f"fastgrad accepted what NumPy refuses ({np_error})"
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)
    COUNTS["composition cases matched NumPy"] += 1


# ----------------------------------------------------------------------------- tampered tapes
def _small_tape(which):
    x = fg.tensor(np.linspace(-1, 1, 12).reshape(3, 4), requires_grad=True)
    w = fg.tensor(np.linspace(0.5, 1.5, 8).reshape(4, 2), requires_grad=True)
    if which == 0:
        y = fg.cross_entropy(x @ w, np.array([0, 1, 1]))
    elif which == 1:
        y = (x[np.array([2, 0])].softmax(axis=0) * x[1:, ::2].sum()).sum()
    else:
        y = fg.concatenate([x.T, w], axis=1).tanh().amax(axis=0).sum()
    y.backward()
    return y.tape, y.node


TAMPER_TARGETS = ["ops", "outs", "in_ptr", "in_idx", "ip_ptr", "iparams", "fp_ptr", "node_off",
                  "node_size", "node_kind", "node_need", "shape_dims", "shape_ptr", "ivalues",
                  "labels", "labels and loop counts"]
TAMPER_VALUES = [-1, 0, 1, 2, 3, 5, 100, 303, 2**31, 2**32, -(2**40), 2**63 - 1, -(2**63)]


def _scan_tape():
    """A loop of 4 steps whose body reads a leaf from outside and imports a constant."""
    w = fg.tensor(np.linspace(0.5, 1.5, 3), requires_grad=True)
    xs = fg.tensor(np.linspace(-1, 1, 12).reshape(4, 3))
    h = fg.scan(lambda h, x: (h * w + x * fg.tensor(np.full(3, 0.5))).tanh(), fg.zeros(3), xs,
                checkpoint="sqrt")
    y = h.sum()
    y.backward()
    return y.tape, y.node


@fuzz(0.5)
@given(st.integers(0, 3), st.sampled_from(TAMPER_TARGETS), st.data())
def test_tampered_tapes_are_refused_or_replay_safely(which, target, data):
    """One integer of a saved tape changed (extreme ones included: 2**63-1 and -2**63, which
    wrap sums in int64), or one node relabelled ('leaf', 'const' or none; with a loop's
    own-node list, n_own and reg_size rewritten to agree, as a consistent multi-field edit
    does): loading refuses it, or the tape is still a valid one (and replays without crashing,
    matching the reference interpreter where it has no loop)."""
    tape, _ = _small_tape(which) if which < 3 else _scan_tape()
    COUNTS["tampered tapes: holding a loop"] += which == 3
    arrays = {}

    def put(a):
        arrays[f"a{len(arrays)}"] = np.array(a, copy=True)
        return f"a{len(arrays) - 1}"

    doc = _tape_to(tape, put)
    if target.startswith("labels"):
        v = data.draw(st.integers(0, tape.n_nodes - 1), "node")
        label = data.draw(st.sampled_from(["leaf", "const", None, "carry"]), "label")
        note(f"node %{v}: label {tape.labels.get(v)!r} -> {label!r}")
        if target == "labels" or not tape.scan_rows:
            labels = {n: s for n, s in doc["labels"] if n != v}
            doc["labels"] = [[n, s] for n, s in labels.items()] + ([[v, label]] if label else [])
        else:
            _relabel_consistently(doc, arrays, v, label)
            COUNTS["tampered tapes: a loop's labels and counts edited together"] += 1
        COUNTS["tampered tapes: a node relabelled"] += 1
    else:
        a = arrays[doc[target]]
        if a.size == 0:
            return
        i = data.draw(st.integers(0, a.size - 1), "position")
        new = data.draw(st.sampled_from(TAMPER_VALUES), "value")
        if a.dtype == np.int8:
            new = int(np.int8(new % 256 - 128 if new > 127 or new < -128 else new))
        note(f"{target}[{i}]: {a[i]} -> {new}")
        a[i] = new
    COUNTS["tampered tapes"] += 1
    try:
        loaded = _tape_from(doc, lambda k: arrays[k])
    except FastgradError as e:
        assert str(e).startswith("load: invalid tape") or str(e).startswith("load:"), e
        COUNTS["tampered tapes refused"] += 1
        return
    COUNTS["tampered tapes still valid (replayed)"] += 1
    loaded.n_done = 0
    loaded.flush()
    ref = Reference(loaded)  # the reference interpreter runs loops too
    with np.errstate(all="ignore"):
        ref.forward()
    for r, name, ins, o in loaded.rows():
        np.testing.assert_allclose(loaded.node_values(o), ref.node(o), rtol=1e-9, atol=1e-9,
                                   equal_nan=True)
    last = int(loaded.outs.a[loaded.n_rows - 1])
    if loaded.node_need.a[last] and loaded.node_kind.a[last] == 0:
        loaded.backward(last, np.ones(loaded.shapes[last]))
