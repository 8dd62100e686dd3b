"""NaN is never swallowed, and fg.detect_anomaly finds it wherever it is made.

1. NaN propagates through every op of the op table as in NumPy, forward and backward: a NaN put
   in any float input of any op gives NaN exactly where the op's NumPy reference (fastgrad's
   reference interpreter) gives NaN, in the output and in every input's gradient. The cases
   are generated from the op table, so a new op is covered without touching this file. Where
   a piecewise op (relu, leaky_relu, abs, clip, maximum, minimum, max) reads a NaN, its slope
   there is NaN (np.heaviside(nan, 0) is nan): the NaN input gets a NaN gradient.
2. fg.detect_anomaly() reports a NaN/Inf made inside an fg.scan loop body at the op that made
   it and the step t, forward and backward, eager and compiled, in every checkpoint mode and
   on the single-cell fast path; fg.fit checks every batch when it is on.
"""

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import test_ops  # the op table's sample inputs (a module: its tests are not collected here)

import fastgrad as fg
from fastgrad.ops import TABLE
from fastgrad.reference import Reference
from fastgrad.tape import Tape
from fastgrad.tensor import placeholder

# ----------------------------------------------------------------------------- NaN propagation
NAN_CASES = [(op, i, pos) for op, i in test_ops.CASES
             for pos in range(len(TABLE[op].samples[i][0]))
             if pos not in TABLE[op].int_inputs]


def nan_case_id(case):
    return f"{test_ops.case_id(case[:2])}-input{case[2]}"


def _float_index(op, i, pos):
    """The index, among the op's float inputs, of operand position ``pos``."""
    return sum(1 for p in range(pos) if p not in TABLE[op].int_inputs)


def _with_nan(op, i, pos, rng, dtype):
    floats, fn, diff = test_ops.make_inputs(op, i, rng, dtype)
    x = floats[_float_index(op, i, pos)]
    x.reshape(-1)[x.size // 2] = np.nan  # one NaN, mid-array (a broadcast or reduced position)
    return floats, fn, diff


def _same_nans(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}:\n got {got}\nwant {want}"



def test_detect_anomaly_checks_a_reshape_though_it_runs_no_kernel():
    """A RESHAPE row computes nothing (its output aliases its input), but under
    fg.detect_anomaly its output is checked as every row's is: a NaN leaf reshaped is found."""
    x = fg.tensor([1.0, np.nan])
    with fg.detect_anomaly(), pytest.raises(fg.FastgradError, match="reshape"):
        x.reshape(2, 1).numpy()

def test_the_generated_nan_cases_cover_every_op_with_samples():
    """Every op with samples in the table gets a NaN in each of its float inputs."""
    covered = {op for op, _, _ in NAN_CASES}
    assert covered == {d.op for d in TABLE.values() if d.samples}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", NAN_CASES, ids=nan_case_id)
def test_a_nan_input_gives_nan_outputs_exactly_where_numpy_does(case, dtype, rng):
    op, i, pos = case
    floats, fn, _ = _with_nan(op, i, pos, rng, dtype)
    with np.errstate(all="ignore"):
        out = fn(*[fg.tensor(x) for x in floats]).numpy()  # the kernels
        tape = Tape(dtype)  # the same op run by the NumPy reference interpreter
        y = fn(*[placeholder(tape, x) for x in floats])
        ref = Reference(tape)
        ref.forward()
    _same_nans(out, ref.node(y.node), f"{TABLE[op].name} forward")


@pytest.mark.parametrize("case", NAN_CASES, ids=nan_case_id)
def test_a_nan_input_gives_nan_gradients_exactly_where_the_numpy_reference_does(case, rng):
    op, i, pos = case
    if not TABLE[op].differentiable:
        return
    floats, fn, _ = _with_nan(op, i, pos, rng, np.float64)
    _gradient_nans_match_the_reference(op, fn, floats, rng)


def _gradient_nans_match_the_reference(op, fn, floats, rng):
    """Backward of ``fn`` at ``floats`` (float64) in the kernels and in the NumPy reference
    interpreter: every leaf's gradient has NaN at the same positions."""
    ts = [fg.tensor(x, requires_grad=True) for x in floats]
    with np.errstate(all="ignore"):
        y = fn(*ts)
        seed = rng.uniform(0.5, 1.5, y.shape)
        y.backward(seed)
        ref = Reference(y.tape)
        ref.forward()
        grads = ref.backward(y.node, seed)
    for leaf, v in y.tape.tensors.leaves:
        _same_nans(leaf.grad, ref.node(v, grads), f"{TABLE[op].name} gradient of %{v}")


ARITHMETIC = [d for d in TABLE.values() if d.op // 100 in (0, 1) and d.differentiable]
PIECEWISE = ["relu", "leaky_relu", "abs", "clip", "maximum", "minimum"]


def test_the_numpy_references_themselves_return_nan_for_a_nan_operand():
    """The generated tests compare the kernels with the op table's NumPy references, so those
    must follow NumPy: every arithmetic elementwise op of a NaN is NaN (np.maximum(nan, 0) is
    nan, so relu(nan) is too), and a piecewise op's slope at a NaN is NaN (np.heaviside)."""
    nan, one = np.array([np.nan]), np.array([1.5])
    for d in ARITHMETIC:
        attrs = d.samples[0][1]
        c0, c1 = attrs.get("c0", 0.0), attrs.get("c1", 0.0)
        with np.errstate(all="ignore"):
            if d.arity == 1:
                outs = [d.np_forward(nan, c0, c1)]
                slopes = [d.np_vjp(nan, outs[0], one, c0, c1)]
            else:
                outs = [d.np_forward(nan, one), d.np_forward(one, nan)]
                slopes = [d.np_vjp(nan, one, outs[0], one)[0], d.np_vjp(one, nan, outs[1], one)[1]]
        assert all(np.isnan(y).all() for y in outs), d.name
        if d.name in PIECEWISE:
            assert all(np.isnan(g).all() for g in slopes), d.name
    assert {d.name for d in ARITHMETIC} >= set(PIECEWISE)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(test_ops.CASES), dtype=st.sampled_from([np.float64, np.float32]),
       seed=st.integers(0, 2**32 - 1), special=st.sampled_from([np.nan, np.inf, -np.inf]),
       density=st.floats(0.05, 1.0))
def test_fuzz_random_nan_and_inf_masks_propagate_as_the_numpy_reference(case, dtype, seed,
                                                                         special, density):
    """Any op of the table, any of its samples, NaN or +-inf at a random subset of the
    positions of every float input: the NaN positions of the output (both dtypes) and of every
    gradient (float64) are the reference interpreter's."""
    op, i = case
    rng = np.random.default_rng(seed)
    floats, fn, _ = test_ops.make_inputs(op, i, rng, dtype)
    for x in floats:
        x[rng.uniform(size=x.shape) < density] = special
    with np.errstate(all="ignore"):
        out = fn(*[fg.tensor(x) for x in floats]).numpy()
        tape = Tape(dtype)
        y = fn(*[placeholder(tape, x) for x in floats])
        ref = Reference(tape)
        ref.forward()
        _same_nans(out, ref.node(y.node), f"{TABLE[op].name} forward")
    if dtype == np.float64 and TABLE[op].differentiable:
        _gradient_nans_match_the_reference(op, fn, floats, rng)


def test_relu_of_nan_is_nan_as_numpy_maximum_and_its_gradient_is_nan():
    x = fg.tensor([np.nan, -1.0, 2.0], requires_grad=True)
    y = fg.relu(x)
    assert np.isnan(y.numpy()[0]) and y.numpy()[1:].tolist() == [0.0, 2.0]
    assert np.isnan(np.maximum(np.nan, 0.0))
    y.sum().backward()
    assert np.isnan(x.grad[0]) and x.grad[1:].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_the_fused_linear_activation_passes_nan_through(activation, dtype):
    x = np.array([[np.nan, 1.0], [0.5, -1.0]], dtype)
    w = fg.tensor(np.array([[1.0, 2.0], [-3.0, 0.5], [0.0, 1.0]], dtype), requires_grad=True)
    y = fg.nn.functional.linear_act(fg.tensor(x), w, fg.tensor(np.zeros(3, dtype)), activation)
    assert np.isnan(y.numpy()[0]).all() and np.isfinite(y.numpy()[1]).all()
    y.sum().backward()
    assert np.isnan(w.grad).any()


def test_one_nan_pixel_makes_the_reported_loss_nan_not_only_the_weights():
    """The issue's case: relu(nan) was 0, so the loss stayed finite while the first layer's
    weight gradient (x^T gz) and then the weights turned NaN."""
    rng = np.random.default_rng(0)
    model = fg.nn.Sequential(fg.nn.Linear(4, 8, seed=1), fg.nn.ReLU(), fg.nn.Linear(8, 3, seed=2))
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    step = fg.compile(lambda x, y: fg.cross_entropy(model(x), y), optimizer=opt)
    x = rng.normal(size=(5, 4))
    x[2, 1] = np.nan
    loss = step(x, np.array([0, 1, 2, 0, 1]))
    assert np.isnan(loss)


def test_clipping_by_norm_with_a_nan_gradient_makes_every_gradient_nan_as_pytorch():
    """torch.nn.utils.clip_grad_norm_ scales by clamp(max_norm / (nan + eps), max=1) = nan: no
    parameter takes an unclipped step. Before, a NaN norm skipped the scaling (nan < 1 is
    false), so the parameters with finite gradients moved by their full, unclipped gradient."""
    a, b = fg.nn.Parameter([0.0, 0.0]), fg.nn.Parameter([0.0, 0.0])
    a.grad, b.grad = np.array([np.nan, 1.0]), np.array([30.0, 40.0])
    assert np.isnan(fg.nn.utils.clip_grad_norm_([a, b], max_norm=1.0))
    assert np.isnan(a.grad).all() and np.isnan(b.grad).all()

    w, v = fg.nn.Parameter([1.0, 1.0]), fg.nn.Parameter([1.0, 1.0])
    opt = fg.optim.SGD([w, v], lr=0.1)
    step = fg.compile(lambda x: (w * x).sum() + (v * v).sum() * 50.0, optimizer=opt,
                      clip_grad_norm=1.0)
    step(np.array([np.nan, 1.0]))
    assert np.isnan(w.numpy()).all() and np.isnan(v.numpy()).all()


def test_amsgrad_keeps_a_nan_second_moment_in_its_running_max():
    """Adam(amsgrad=True) keeps max(v_max, v) as torch.maximum does, NaN included."""
    w = fg.nn.Parameter([1.0, 1.0])
    opt = fg.optim.Adam([w], lr=0.1, amsgrad=True)
    step = fg.compile(lambda x: (w * x).sum(), optimizer=opt)
    step(np.array([1.0, 2.0]))
    step(np.array([np.nan, 2.0]))
    v_max = opt.state[2]
    assert np.isnan(v_max[0]) and np.isfinite(v_max[1])


# ----------------------------------------------------------------------------- anomaly in scan
XS = np.array([[1.0, 2.0], [3.0, 1.0], [-1.0, 4.0], [2.0, 2.0], [1.0, 1.0]])  # log(-1) at t=2
CHECKPOINTS = [None, 2, fg.Binomial(slots=2)]


def _body(w):
    def step(h, x):
        return fg.tanh(h * w + fg.log(x))  # rows: mul, log, add, tanh

    return step


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=str)
def test_anomaly_names_the_op_and_step_inside_an_eager_scan_forward(checkpoint):
    w = fg.tensor([0.5, -0.5], requires_grad=True)
    with fg.detect_anomaly():
        hT = fg.scan(_body(w), fg.tensor(np.zeros(2)), fg.tensor(XS), checkpoint=checkpoint)
        with pytest.raises(fg.AnomalyError) as err, np.errstate(all="ignore"):
            hT.sum().item()
    msg = str(err.value)
    assert re.match(r"forward: row \d+ \(log\) at step t=2 of 5 of the fg.scan loop body", msg)
    # the input statistics are those of step 2: x_2 = [-1, 4]
    assert "shape (2,), min -1 max 4, nan 0, inf 0" in msg
    # the aborted scan runs again when next used: outside anomaly mode its result is the one a
    # fresh scan gives (NaN in the component that took log(-1))
    with np.errstate(all="ignore"):
        want = fg.scan(_body(w), fg.tensor(np.zeros(2)), fg.tensor(XS)).numpy()
        np.testing.assert_array_equal(hT.numpy(), want)
    assert np.isnan(want[0]) and np.isfinite(want[1])


XS_ZERO = np.array([[1.0, 2.0], [3.0, 1.0], [0.0, 4.0], [2.0, 2.0]])  # sqrt'(0) = inf at t=2


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=str)
def test_anomaly_names_the_op_and_step_inside_an_eager_scan_backward(checkpoint):
    w = fg.tensor([0.5, -0.5], requires_grad=True)
    xs = fg.tensor(XS_ZERO, requires_grad=True)

    def step(h, x):
        return h * w + fg.sqrt(x)  # forward finite; backward 0.5 / sqrt(0) = inf at t=2

    with fg.detect_anomaly():
        loss = fg.scan(step, fg.tensor(np.zeros(2)), xs, checkpoint=checkpoint).sum()
        loss.item()
        with pytest.raises(fg.AnomalyError) as err, np.errstate(all="ignore"):
            loss.backward()
    msg = str(err.value)
    assert re.match(r"backward: row \d+ \(sqrt\) at step t=2 of 4 of the fg.scan loop body",
                    msg), msg
    assert "shape (2,), min 0 max 4, nan 0, inf 0" in msg  # x_2, the input of that sqrt
    # after the aborted sweep the tape is whole: a backward outside anomaly mode is right
    with np.errstate(all="ignore"):
        loss.backward()
        # h_T = sum_t sqrt(x_t) w^(T-1-t)
        want = 0.5 / np.sqrt(XS_ZERO) * w.numpy() ** np.arange(3, -1, -1)[:, None]
    np.testing.assert_allclose(xs.grad, want, rtol=1e-12)


def test_anomaly_names_the_op_and_step_inside_a_compiled_scan_forward_and_backward():
    w = fg.nn.Parameter(np.array([0.5, -0.5]))
    step = fg.compile(lambda xs: fg.scan(_body(w), np.zeros(2), xs).sum(), params=[w])
    with fg.detect_anomaly(), np.errstate(all="ignore"):
        with pytest.raises(fg.AnomalyError,
                           match=r"^forward: row \d+ \(log\) at step t=2 of 5 of the fg.scan"):
            step(XS)
        assert np.isfinite(step(np.abs(XS))[0])

    v = fg.nn.Parameter(np.array([0.5, 0.5]))

    def sqrt_body(h, x):
        return h + fg.sqrt(x * v)  # x_2 * v = [0, 2]: sqrt's gradient there is inf

    step = fg.compile(lambda xs: fg.scan(sqrt_body, np.zeros(2), xs).sum(), params=[v])
    with fg.detect_anomaly(), np.errstate(all="ignore"):
        with pytest.raises(fg.AnomalyError,
                           match=r"^backward: row \d+ \(sqrt\) at step t=2 of 4 of the fg.scan"):
            step(XS_ZERO)


@pytest.mark.parametrize("checkpoint", [None, 2], ids=str)
def test_anomaly_inside_a_single_cell_scan_body_names_its_step(checkpoint):
    """A body that is one fused cell h_t = act(h_{t-1} W^T + x_t) runs on a fast path of its
    own; the check and the report are the same there."""
    W = fg.tensor(np.array([[0.5, 0.0], [0.0, 0.5]]), requires_grad=True)
    xs = np.ones((5, 3, 2))
    xs[3, 1, 0] = np.nan

    def cell(h, x):
        return fg.nn.functional.linear_act(h, W, x, "relu")

    with fg.detect_anomaly():
        hT = fg.scan(cell, fg.tensor(np.zeros((3, 2))), fg.tensor(xs), checkpoint=checkpoint)
        with pytest.raises(fg.AnomalyError) as err:
            hT.sum().item()
    msg = str(err.value)
    assert re.match(r"forward: row \d+ \(linear_act\) at step t=3 of 5 of the fg.scan", msg), msg
    assert "shape (3, 2), min 1 max 1, nan 1, inf 0" in msg  # x_3, with its NaN

    with fg.detect_anomaly():  # backward: a huge seed overflows W's gradient at the last step
        hT = fg.scan(cell, fg.tensor(np.zeros((3, 2))), fg.tensor(np.ones((5, 3, 2))),
                     checkpoint=checkpoint)
        hT.numpy()
        with pytest.raises(fg.AnomalyError) as err:
            hT.backward(np.full((3, 2), 1e308))
    assert re.match(r"backward: row \d+ \(linear_act\) at step t=4 of 5 of the fg.scan",
                    str(err.value)), str(err.value)


# ----------------------------------------------------------------------------- anomaly in fit
def test_fit_inside_detect_anomaly_stops_at_the_first_bad_batch_with_the_op_named():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(16, 3)), rng.normal(size=(16, 1))
    X[9, 1] = np.nan  # in the third batch of 4 (no shuffling)
    lin = fg.nn.Linear(3, 1, seed=0)
    opt = fg.optim.SGD(lin.parameters(), lr=0.01)
    step = fg.compile(lambda x, y: fg.mse_loss(lin(x), y), optimizer=opt)
    with fg.detect_anomaly(), pytest.raises(fg.AnomalyError) as err:
        fg.fit(step, X, Y, epochs=1, batch_size=4, shuffle=False, progress=False)
    assert re.match(r"fit \(epoch 1, batch 3\): forward: row \d+ \(linear\) produced nan",
                    str(err.value)), str(err.value)
    assert opt.t == 2  # the two batches before it were applied, and only they
    assert all(np.isfinite(p.numpy()).all() for p in lin.parameters())

    ref = fg.nn.Linear(3, 1, seed=0)  # the same two updates, one batch at a time
    ref_opt = fg.optim.SGD(ref.parameters(), lr=0.01)
    ref_step = fg.compile(lambda x, y: fg.mse_loss(ref(x), y), optimizer=ref_opt)
    for b in range(2):
        ref_step(X[4 * b : 4 * b + 4], Y[4 * b : 4 * b + 4])
    for p, q in zip(lin.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-12)


def test_fit_without_anomaly_mode_runs_through_a_nan_batch():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(8, 3)), rng.normal(size=(8, 1))
    X[5, 0] = np.nan
    lin = fg.nn.Linear(3, 1, seed=0)
    opt = fg.optim.SGD(lin.parameters(), lr=0.01)
    step = fg.compile(lambda x, y: fg.mse_loss(lin(x), y), optimizer=opt)
    hist = fg.fit(step, X, Y, epochs=1, batch_size=4, shuffle=False, progress=False)
    assert np.isnan(hist.loss[0]) and opt.t == 2
