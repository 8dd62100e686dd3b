"""Every op in the registry (fastgrad/ops/), checked from its definition: forward against NumPy
(float64 and float32, broadcasting shape groups included), reverse against central finite
differences (float64), Numba replay against the NumPy reference interpreter, layouts that
round-trip, complete definitions, and reachability from the public front end. A new op gets all
of these without touching this file."""

import math

import numpy as np
import pytest
from conftest import sample_array

import fastgrad as fg
from fastgrad.ops import CONTROL, TABLE, Op, incomplete
from fastgrad.reference import Reference
from fastgrad.tape import Tape
from fastgrad.tensor import apply, placeholder

CASES = [(d.op, i) for d in TABLE.values() for i in range(len(d.samples))]


def case_id(case):
    return f"{TABLE[case[0]].name}-{case[1]}"


def make_inputs(op, sample_index, rng, dtype=np.float64):
    """(float inputs, a function of them that records the op), from the table's sample."""
    d = TABLE[op]
    shapes, attrs, domain = d.samples[sample_index]
    floats, build = [], []
    for pos, shape in enumerate(shapes):
        if pos in d.int_inputs:
            lo, hi = d.int_bound(shapes, **attrs)
            build.append(("int", rng.integers(lo, hi, size=shape)))
        else:
            dom = "cond" if (domain == "cond" and pos == 0) else (
                "real" if domain == "cond" else domain)
            floats.append(sample_array(rng, shape, dom, dtype))
            build.append(("float", len(floats) - 1))
    diff_positions = [k for k, (kind, _) in enumerate(build) if kind == "float" and not (
        op == Op.WHERE and k == 0)]

    def fn(*xs):
        args = [xs[v] if kind == "float" else v for kind, v in build]
        return apply(op, *args, **attrs)

    return floats, fn, diff_positions


def test_every_op_has_samples_to_check():
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    missing = [d.name for d in TABLE.values()
               if not d.samples and not (d.checked_by and (root / d.checked_by).exists())]
    assert not missing, f"ops without gradcheck samples in the op table: {missing}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradient_matches_finite_differences(case, rng):
    op, i = case
    d = TABLE[op]
    floats, fn, diff = make_inputs(op, i, rng)
    if not d.differentiable:
        ts = [fg.tensor(x, requires_grad=True) for x in floats]
        assert not fn(*ts).requires_grad
        return
    if not diff:
        pytest.fail(f"{d.name} has no differentiable float input")
    worst = fg.gradcheck(fn, floats)
    assert worst <= 1.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_matches_numpy_reference(case, dtype, rng):
    op, i = case
    floats, fn, _ = make_inputs(op, i, rng, dtype)
    out = fn(*[fg.tensor(x) for x in floats])  # constants: evaluated at once by the kernels
    assert out.dtype == dtype
    tape = Tape(dtype)  # the same op recorded on a tape and run by the NumPy interpreter
    y = fn(*[placeholder(tape, x) for x in floats])
    ref = Reference(tape)
    ref.forward()
    expected = ref.node(y.node)
    assert expected.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(out.numpy(), expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(y.numpy(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_replay_backward_matches_reference_interpreter(case, rng):
    op, i = case
    d = TABLE[op]
    if not d.differentiable:
        return
    floats, fn, _ = make_inputs(op, i, rng)
    ts = [fg.tensor(x, requires_grad=True) for x in floats]
    y = fn(*ts)
    seed = rng.uniform(0.5, 1.5, y.shape)
    y.backward(seed)
    ref = Reference(y.tape)
    ref.forward()
    grads = ref.backward(y.node, seed)
    for leaf, v in y.tape.tensors.leaves:
        np.testing.assert_allclose(leaf.grad, ref.node(v, grads), rtol=1e-10, atol=1e-12)


ELEMENTWISE_BINARY = [d.op for d in TABLE.values() if d.op // 100 == 1 and d.differentiable]


@pytest.mark.parametrize("op", ELEMENTWISE_BINARY, ids=lambda o: o.name.lower())
def test_same_tensor_in_both_operands_adds_both_terms(op, rng):
    """x op x: both VJP terms must be added into one gradient slot, not overwrite each other."""
    d = TABLE[op]
    domain = d.samples[0][2]
    x = sample_array(rng, (3, 4), domain)
    assert fg.gradcheck(lambda t: apply(op, t, t), [x]) <= 1.0


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_record_once_replay_at_new_inputs_equals_fresh_record(case, rng):
    """Replaying a recorded tape with new leaf values gives what recording afresh gives."""
    op, i = case
    floats, fn, _ = make_inputs(op, i, np.random.default_rng(7))
    tape = Tape(np.float64)
    slots = [placeholder(tape, x) for x in floats]
    y = fn(*slots)
    y.numpy()
    new = [x * 0.9 + 0.05 for x in floats] if TABLE[op].samples[i][2] != "cond" else floats
    for slot, x in zip(slots, new):
        tape.node_values(slot.node)[...] = x
    tape.n_done = 0
    fresh = fn(*[fg.tensor(x) for x in new])
    np.testing.assert_allclose(y.numpy(), fresh.numpy(), rtol=1e-12, atol=1e-12)


# Every op must be reachable from the public API: the registry's front-end calls, recorded,
# must cover the whole registry, each producing its own op.
def _front_end_scope(tape):
    return {"fg": fg, "np": np, "labels": np.array([0, 3, 1]),
            "x": placeholder(tape, np.linspace(0.5, 2.0, 12).reshape(3, 4)),
            "v": placeholder(tape, np.array([0.3, 0.7, 1.1, 1.9]))}


@pytest.mark.parametrize("op", list(TABLE), ids=lambda o: o.name.lower())
def test_every_op_is_reachable_from_the_front_end(op):
    tape = Tape(np.float64)
    scope = _front_end_scope(tape)
    before = tape.n_rows
    eval(TABLE[op].front_end, scope)  # noqa: S307 - an expression from the registry's source
    seen = {Op(int(c)) for c in tape.ops.view[before:]}
    assert op in seen, f"{TABLE[op].front_end!r} records {sorted(seen)}, not {op.name}"


def test_every_op_has_a_complete_definition():
    for d in TABLE.values():
        assert not incomplete(d), f"{d.name}: missing {incomplete(d)}"
        assert d.name == d.op.name.lower() and d.code == int(d.op)
        assert d.arity == -1 or d.arity >= 1
        root = __import__("pathlib").Path(__file__).resolve().parents[1]
        assert (root / "kernels" / f"{d.kernel}.py").is_file(), d.kernel
        if d.family == CONTROL:
            assert (root / d.checked_by).is_file(), d.checked_by


def test_incomplete_names_a_missing_part():
    """The completeness check the registry runs at import can fail: a definition without a VJP
    (but marked differentiable) or without samples is reported by name."""
    import dataclasses

    d = TABLE[Op.TANH]
    assert incomplete(dataclasses.replace(d, vjp=None)) == ["vjp (exactly when differentiable)"]
    assert incomplete(dataclasses.replace(d, samples=[])) == ["samples"]
    assert incomplete(dataclasses.replace(d, kernel="nowhere"))[0].startswith("kernel")


def test_codes_are_the_frozen_numbers_saved_tapes_hold():
    """Append-only: existing codes never move (saved tapes and the compiled kernels hold them)."""
    frozen = {"NEG": 1, "RPOW_SCALAR": 17, "ADD": 100, "NE": 113, "WHERE": 200, "SUM": 300,
              "LOG_SOFTMAX": 303, "MATMUL": 400, "LINEAR_ACT": 402, "RESHAPE": 500,
              "CONCAT": 503, "CROSS_ENTROPY": 600, "SCAN_BEGIN": 700, "SCAN": 701}
    assert {name: int(Op[name]) for name in frozen} == frozen
    assert [int(op) for op in Op] == sorted(int(op) for op in Op)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_layout_round_trips(case):
    """The attributes a shape rule encodes decode to named fields that encode back to the same
    row, and a row one integer too long or too short does not decode."""
    op, i = case
    d = TABLE[op]
    shapes, attrs, _ = d.samples[i]
    shapes = [tuple(s) for s in shapes]
    out_shape, ip, fp = d.rule(d.name, shapes, **attrs)
    a = d.layout.decode(ip, fp, d.name)
    assert d.layout.encode(**vars(a)) == (list(ip), list(fp))
    assert set(vars(a)) == set(d.layout.ints) | set(d.layout.floats) | \
        {t.name for t in d.layout.tails}
    rest = d.layout.tails and d.layout.tails[-1].count is None  # concat's widths: any length
    wrong = [ip[: len(d.layout.ints) - 1]] if rest else [[*ip, 0]] + ([ip[:-1]] if ip else [])
    for bad in wrong:
        with pytest.raises(fg.FastgradError, match="layout"):
            d.layout.decode(bad, fp, d.name)
    # and the tape validator's inverse: the rule re-run on one recovered attribute set (of
    # several candidates, some of which the rule may refuse) reproduces the row
    def rerun(c):
        try:
            return d.rule(d.name, shapes, **c)
        except fg.FastgradError:
            return None

    assert (out_shape, ip, fp) in [rerun(c) for c in d.recover(shapes, tuple(out_shape), a)]


def test_scan_layout_matches_the_kernels_header():
    from fastgrad.kernels.scan import HEADER
    from fastgrad.ops.control import SCAN_LAYOUT

    assert len(SCAN_LAYOUT.ints) == HEADER


def test_table_rows_are_consistent():
    for d in TABLE.values():
        for shapes, attrs, domain in d.samples:
            assert d.arity in (-1, len(shapes)), d.name
            out_shape, ip, fp = d.rule(d.name, [tuple(s) for s in shapes], **attrs)
            assert all(isinstance(s, int) for s in out_shape)
            assert math.prod(out_shape) >= 0
