"""Every op in the op table, checked from the table: forward against NumPy, reverse against
central finite differences (float64), Numba replay against the NumPy reference interpreter, and
reachability from the public front end. A new op gets all of these without touching this file."""

import math

import numpy as np
import pytest
from conftest import sample_array

import fastgrad as fg
from fastgrad.opcodes import Op
from fastgrad.ops import TABLE
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
    for leaf, v in y.tape.leaves:
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


# Every op must be reachable from the public API: these front-end calls, recorded, must cover
# the whole op table.
def _front_end_calls(tape):
    x = placeholder(tape, np.linspace(0.5, 2.0, 12).reshape(3, 4))
    v = placeholder(tape, np.array([0.3, 0.7, 1.1, 1.9]))
    labels = np.array([0, 3, 1])
    return [
        -x, abs(x), fg.exp(x), fg.log(x), fg.sqrt(x), x.tanh(), x.sigmoid(), fg.relu(x),
        fg.leaky_relu(x, 0.1), fg.softplus(x), x.clip(0.6, 1.5), x + 1, x * 2, x / 3, 2 / x,
        x**2, 2**x, x + v, x - v, x * v, x / v, x**v, fg.maximum(x, v), fg.minimum(x, v),
        fg.binary_cross_entropy_with_logits(x, v), x > v, x >= v, x < v, x <= v, x == v, x != v,
        fg.where(x > 1, x, v), x.sum(axis=0), x.max(axis=1), x.softmax(), x.log_softmax(),
        x @ x.T, fg.nn.functional.linear(x, x, v[:3]),
        fg.nn.functional.linear_act(x, x, v[:3], "tanh"), x.reshape(4, 3), x[1:, ::2], x[np.array([2, 0])],
        fg.concatenate([x, x], axis=1), fg.cross_entropy(x, labels), fg.mse_loss(x, x * 0),
        fg.stack([v, v]), x.mean(), fg.take(x, np.array([1, 1]), axis=1), x.T,
        fg.scan(lambda h, xt: h * xt, v, x),
    ]


def test_every_op_is_reachable_from_the_front_end():
    tape = Tape(np.float64)
    _front_end_calls(tape)
    seen = {Op(int(c)) for c in tape.ops.view}
    assert seen == set(Op), f"ops not reachable from the front end: {set(Op) - seen}"


def test_table_rows_are_consistent():
    for d in TABLE.values():
        assert d.name == d.op.name.lower()
        assert d.arity == -1 or d.arity >= 1
        for shapes, attrs, domain in d.samples:
            assert d.arity in (-1, len(shapes)), d.name
            out_shape, ip, fp = d.rule(d.name, [tuple(s) for s in shapes], **attrs)
            assert all(isinstance(s, int) for s in out_shape)
            assert math.prod(out_shape) >= 0
