"""A plain-SGD compiled step folds the update of each Linear layer's weight and bias into the
backward sweep (their gradient target is INTO_VALUE, kernels/views.py): the weight's as part of
its gradient's BLAS product, W -= lr (gZ^T X). It must update exactly like the step that keeps every gradient, to
rounding, and stay off whenever the update needs the whole gradient first."""

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import kernels
from fastgrad.kernels.linalg import VJP_LOOP_MAX_ROWS
from fastgrad.kernels.views import INTO_VALUE

# (sizes, activation, batch): the VJP's loop path (few rows), BLAS on the calling thread, and
# a product large enough for OpenBLAS's thread pool (or MKL, when installed)
CASES = [([6, 9, 3], "tanh", VJP_LOOP_MAX_ROWS - 3), ([30, 40, 5], "relu", 64),
         ([200, 64, 5], "sigmoid", 64)]
CASE_IDS = ["loop", "blas", "blas-large"]


def problem(sizes, batch, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch)
    return x, y


def train(sizes, act, batch, dtype, keep_grads, steps=4, clip=None, **sgd):
    model = fg.nn.MLP(sizes, activation=act, seed=1, dtype=dtype)
    opt = fg.optim.SGD(model.parameters(), lr=0.05, **sgd)
    step = fg.compile(lambda a, b: fg.cross_entropy(model(a), b), optimizer=opt,
                      keep_grads=keep_grads, clip_grad_norm=clip)
    x, y = problem(sizes, batch, dtype)
    losses = []
    for k in range(steps):
        if k == 2:
            opt.lr = 0.02  # a schedule's change reaches the folded update too
        losses.append(step(x, y))
    return losses, opt, step, model


def tolerances(dtype):
    return dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes,act,batch", CASES, ids=CASE_IDS)
def test_a_folded_step_updates_like_the_step_that_keeps_every_gradient(sizes, act, batch, dtype):
    folded_losses, folded_opt, folded, _ = train(sizes, act, batch, dtype, keep_grads=False)
    kept_losses, kept_opt, kept, _ = train(sizes, act, batch, dtype, keep_grads=True)
    prog = folded._last
    params = [v for v in range(prog.tape.n_nodes) if prog.tape.node_kind.a[v] == 2]
    assert len(params) == 2 * (len(sizes) - 1)  # every weight and bias is marked
    assert (prog.fold_modes[params] == INTO_VALUE).all()
    np.testing.assert_allclose(folded_losses, kept_losses, **tolerances(dtype))
    np.testing.assert_allclose(folded_opt.flat, kept_opt.flat, **tolerances(dtype))
    assert not np.array_equal(folded_opt.flat, train(sizes, act, batch, dtype, True, 0)[1].flat)


def gradient_at(model, sizes, batch, dtype):
    """The full gradient, flat, at the model's current parameters (value_and_grad)."""
    x, y = problem(sizes, batch, dtype)
    _, grads = fg.compile(lambda a, b: fg.cross_entropy(model(a), b),
                          params=model.parameters())(x, y)
    return np.concatenate([g.ravel() for g in grads])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [1, 2], ids=CASE_IDS[1:])
def test_the_folded_weight_gradient_is_not_stored_and_keep_grads_stores_it_again(case, dtype):
    sizes, act, batch = CASES[case]
    _, opt, step, model = train(sizes, act, batch, dtype, keep_grads=False, steps=1)
    opt.flat_grad[:] = np.nan
    step(*problem(sizes, batch, dtype))
    first_weight = opt.flat_grad[: sizes[0] * sizes[1]]
    assert np.isnan(first_weight).all()  # BLAS updated W itself; no gradient was written
    assert np.isfinite(opt.flat).all()
    step.keep_grads = True  # from the next call on
    want = gradient_at(model, sizes, batch, dtype)
    step(*problem(sizes, batch, dtype))
    np.testing.assert_allclose(opt.flat_grad, want, **tolerances(dtype))


@pytest.mark.parametrize("option", ["momentum", "weight_decay", "clip_grad_norm",
                                    "clip_grad_value", "detect_anomaly"])
def test_folding_is_off_when_the_update_needs_the_whole_gradient(option):
    sizes, act, batch = CASES[2]
    dtype = np.float64
    model = fg.nn.MLP(sizes, activation=act, seed=1, dtype=dtype)
    opt = fg.optim.SGD(model.parameters(), lr=0.05,
                       **({option: 0.1} if option in ("momentum", "weight_decay") else {}))
    step = fg.compile(lambda a, b: fg.cross_entropy(model(a), b), optimizer=opt,
                      **({option: 1e6} if option.startswith("clip") else {}))
    x, y = problem(sizes, batch, dtype)
    step(x, y)
    assert step._last.folds  # the program could fold: the step decides against it
    want = gradient_at(model, sizes, batch, dtype)
    opt.flat_grad[:] = np.nan
    if option == "detect_anomaly":
        with fg.detect_anomaly():
            step(x, y)
    else:
        step(x, y)
    np.testing.assert_allclose(opt.flat_grad, want, rtol=1e-12, atol=1e-14)


def test_turning_momentum_on_between_steps_stops_folding_from_the_next_step():
    sizes, act, batch = CASES[1]
    runs = []
    for keep_grads in (False, True):
        _, opt, step, _ = train(sizes, act, batch, np.float64, keep_grads, steps=2)
        opt.options["momentum"] = 0.9
        x, y = problem(sizes, batch, np.float64, seed=1)
        losses = [step(x, y) for _ in range(3)]
        runs.append((losses, opt.flat.copy(), opt.state[0].copy()))
    for folded, kept in zip(*runs):
        np.testing.assert_allclose(folded, kept, rtol=1e-12, atol=1e-14)


def test_a_layer_applied_twice_is_not_folded_and_trains_like_the_eager_engine():
    # The inner application's input gradient reads W after the outer one's VJP: had W been
    # updated there, the first layer's gradient would be off (by about 2e-4 here).
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(16, 4)), rng.normal(size=(16, 4))
    trained = []
    for compiled in (True, False):
        first = fg.nn.Linear(4, 4, seed=2, dtype=np.float64)
        layer = fg.nn.Linear(4, 4, seed=3, dtype=np.float64)
        opt = fg.optim.SGD(first.parameters() + layer.parameters(), lr=0.1)

        def loss(a, b):
            return fg.mse_loss(layer(fg.tanh(layer(fg.tanh(first(a))))), b)

        step = fg.compile(loss, optimizer=opt)
        for _ in range(3):
            if compiled:
                step(x, y)
            else:
                opt.zero_grad()
                loss(fg.tensor(x), fg.tensor(y)).backward()
                opt.step()
        if compiled:
            prog = step._last
            marked = {int(prog.tape.node_off.a[v]) for v in range(prog.tape.n_nodes)
                      if prog.fold_modes[v] == INTO_VALUE}
        trained.append(opt.flat.copy())
    np.testing.assert_allclose(trained[0], trained[1], rtol=1e-12, atol=1e-14)
    # the first layer folds (its weight, 16 values, and its bias, in opt.flat); the layer
    # applied twice, with two consumers, does not
    assert marked == {0, 16}


def test_fit_folds_too_and_trains_like_the_step_that_keeps_every_gradient():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(100, 12))
    Y = rng.integers(0, 3, 100)
    runs = []
    for keep_grads in (False, True):
        model = fg.nn.MLP([12, 16, 3], activation="relu", seed=4)
        opt = fg.optim.SGD(model.parameters(), lr=0.1)
        step = fg.compile(lambda a, b: fg.cross_entropy(model(a), b), optimizer=opt,
                          keep_grads=keep_grads)
        opt.flat_grad[:] = np.nan
        hist = fg.fit(step, X, Y, epochs=3, batch_size=20, seed=5, progress=False)
        # 20 rows: the first weight's gradient goes through BLAS, folded unless kept
        assert np.isnan(opt.flat_grad[: 12 * 16]).all() != keep_grads
        runs.append((hist.loss, opt.flat.copy()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-12)
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-12, atol=1e-14)


def test_fit_inside_detect_anomaly_writes_every_gradient():
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(40, 12)), rng.integers(0, 3, 40)
    model = fg.nn.MLP([12, 16, 3], activation="relu", seed=4)
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    step = fg.compile(lambda a, b: fg.cross_entropy(model(a), b), optimizer=opt)
    opt.flat_grad[:] = np.nan
    with fg.detect_anomaly():
        fg.fit(step, X, Y, epochs=1, batch_size=20, shuffle=False, progress=False)
    assert np.isfinite(opt.flat_grad).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [3, VJP_LOOP_MAX_ROWS + 9], ids=["loops", "blas"])
@pytest.mark.parametrize("activation", [None, "tanh"])
def test_a_vjp_writes_into_an_into_value_target_with_the_sweeps_alpha(rows, activation, dtype):
    """The VJP kernels know no optimizer: given the target INTO_VALUE and value_alpha, the
    linear VJP adds value_alpha times the weight's and bias's gradients onto their values,
    whoever chose the target (here a hand-made sweep with alpha 0.5, not a learning rate)."""
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((rows, 5)).astype(dtype)
    w0 = rng.standard_normal((4, 5)).astype(dtype)
    b0 = rng.standard_normal(4).astype(dtype)
    w, b = fg.tensor(w0, requires_grad=True), fg.tensor(b0, requires_grad=True)
    z = fg.nn.functional.linear(fg.tensor(x0), w, b)
    loss = (z if activation is None else fg.tanh(z)).sum()
    tape = loss.tape
    tape.flush()
    gz = np.ones((rows, 4)) if activation is None else 1 - np.tanh(x0 @ w0.T + b0) ** 2
    want_gw, want_gb = gz.T @ x0, gz.sum(0)
    node = {id(leaf): v for leaf, v in tape.tensors.leaves}
    modes = tape.grad_modes().copy()
    modes[[node[id(w)], node[id(b)]]] = INTO_VALUE
    grads = np.zeros(tape.values.a.size, tape.dtype)
    grads[tape.node_off.a[loss._node]] = 1.0
    arrays = tape.program_arrays
    bad = kernels.replay_backward(tape.arrays(), tape.values.a, tape.ivalues.a, arrays.param_arena,
                                  grads, arrays.param_grads, modes, tape.scratch(), 0,
                                  tape.producer[loss._node] + 1, False, 0.5)
    assert bad == -1

    def value(t):
        return tape.node_values(node[id(t)]).reshape(t.shape)

    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(value(w), w0 + 0.5 * want_gw, **tol)
    np.testing.assert_allclose(value(b), b0 + 0.5 * want_gb, **tol)
