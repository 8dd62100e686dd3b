"""Forward mode (fg.jvp), checked from the op registry: every op has one JVP rule, and on every
sample of tests/test_ops.py each rule matches central finite differences in float64 and agrees
with the reverse sweep (u . J t == (J^T u) . t). A new op gets these checks without touching
this file."""

import numpy as np
import pytest
from test_ops import CASES, case_id, make_inputs

import fastgrad as fg
from fastgrad.jvp import RULES
from fastgrad.ops import CONTROL, TABLE

K = 3  # tangent directions carried at once in the table tests


def test_every_differentiable_op_has_a_jvp_rule_with_samples_to_check_it_on():
    assert set(RULES) == set(TABLE)
    for d in TABLE.values():
        if d.family == CONTROL:  # replayed by the interpreter itself (the scan test below)
            assert RULES[d.op] is None and d.checked_by, d.name
        elif d.differentiable:
            assert callable(RULES[d.op]) and d.samples, f"{d.name}: no JVP rule or samples"
        else:  # piecewise-constant outputs (comparisons): the replay gives them no tangent
            assert RULES[d.op] is None, d.name


def _tangents(floats, diff, rng):
    return [rng.standard_normal((K,) + x.shape) if i in diff else None
            for i, x in enumerate(floats)]


def _value(fn, xs):
    return np.asarray(fn(*[fg.tensor(x) for x in xs]).numpy(), np.float64)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_jvp_matches_central_finite_differences(case, rng):
    op, i = case
    floats, fn, diff = make_inputs(op, i, rng)
    tans = _tangents(floats, diff, rng)
    y, dy = fg.jvp(fn, tuple(floats), tuple(tans))
    assert dy.shape == (K,) + y.shape
    np.testing.assert_allclose(y, _value(fn, floats), rtol=1e-12, atol=1e-12)
    eps = 1e-6
    for j in range(K):
        up = [x + eps * t[j] if t is not None else x for x, t in zip(floats, tans)]
        down = [x - eps * t[j] if t is not None else x for x, t in zip(floats, tans)]
        num = (_value(fn, up) - _value(fn, down)) / (2 * eps)
        np.testing.assert_allclose(dy[j], num, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{TABLE[op].name}: direction {j}")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_jvp_is_the_transpose_of_the_reverse_sweep(case, rng):
    """u . (J t) == (J^T u) . t, with J^T u from backward(): forward and reverse agree."""
    op, i = case
    if not TABLE[op].differentiable:
        return
    floats, fn, diff = make_inputs(op, i, rng)
    tans = _tangents(floats, diff, rng)
    out, dy = fg.jvp(fn, tuple(floats), tuple(tans))
    u = rng.standard_normal(out.shape)
    ts = [fg.tensor(x, requires_grad=True) for x in floats]
    fn(*ts).backward(u)
    for j in range(K):
        forward = float(np.sum(u * dy[j]))
        reverse = sum(float(np.sum(t.grad * tan[j])) for t, tan in zip(ts, tans)
                      if tan is not None)
        assert forward == pytest.approx(reverse, rel=1e-9, abs=1e-10)


def test_jvp_through_scan_matches_finite_differences():
    rng = np.random.default_rng(3)
    W = rng.normal(size=(4, 4)) * 0.5
    xs = rng.normal(size=(7, 1, 4))
    h0 = rng.normal(size=(1, 4))

    def fn(h, x, w):
        hs, h_T = fg.scan(lambda h, xt: (h @ w + xt).tanh(), h, x, stack=True)
        return (hs * hs).sum() + h_T.sum()

    prim = (h0, xs, W)
    tans = tuple(rng.standard_normal((2,) + p.shape) for p in prim)
    _, dy = fg.jvp(fn, prim, tans)
    eps = 1e-6
    for j in range(2):
        up = _value(fn, [p + eps * t[j] for p, t in zip(prim, tans)])
        down = _value(fn, [p - eps * t[j] for p, t in zip(prim, tans)])
        assert dy[j] == pytest.approx((up - down) / (2 * eps), rel=1e-6)


def test_unbatched_tangents_give_unbatched_output_and_none_is_zero():
    _, dy = fg.jvp(lambda a, b: a * b, (np.array([2.0, 3.0]), np.array([5.0, 7.0])),
                   (np.array([1.0, 0.0]), None))
    np.testing.assert_array_equal(dy, [5.0, 0.0])
    lin = fg.linearize(lambda a: (a * a).sum(), np.zeros(2))
    for x in (np.array([1.0, 2.0]), np.array([-3.0, 0.5])):
        val, t = lin((x,), (np.ones(2),))
        assert val == pytest.approx((x * x).sum()) and t == pytest.approx(2 * x.sum())


def test_jvp_refuses_mismatched_tangent_shapes():
    with pytest.raises(fg.FastgradError, match="tangent 0 has shape"):
        fg.jvp(lambda a: a * 2, (np.zeros(3),), (np.zeros(4),))
