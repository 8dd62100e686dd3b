"""Compiled training: trace once, replay natively, update with PyTorch's optimizer rules."""

import logging

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.datasets import load_digits


def small_problem(seed=0, n=40):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    Y = np.sin(X @ rng.normal(size=(5, 2)))
    return X, Y


def test_compiled_step_equals_eager_engine_over_several_steps():
    X, Y = small_problem()
    eager = fg.nn.MLP([5, 8, 2], activation="tanh", seed=1)
    comp = fg.nn.MLP([5, 8, 2], activation="tanh", seed=1)
    opt_e = fg.optim.SGD(eager.parameters(), lr=0.1, momentum=0.9)
    opt_c = fg.optim.SGD(comp.parameters(), lr=0.1, momentum=0.9)
    step = fg.compile(lambda x, y: fg.mse_loss(comp(x), y), optimizer=opt_c)
    for k in range(5):
        xb, yb = X[8 * k : 8 * k + 8], Y[8 * k : 8 * k + 8]
        opt_e.zero_grad()
        loss_e = fg.mse_loss(eager(xb), yb)
        loss_e.backward()
        grads_e = [p.grad.copy() for p in eager.parameters()]
        opt_e.step()
        loss_c = step(xb, yb)
        assert loss_c == pytest.approx(loss_e.item(), rel=1e-12)
        np.testing.assert_allclose(opt_c.flat_grad, np.concatenate([g.ravel() for g in grads_e]),
                                   rtol=1e-12, atol=1e-14)
        for pe, pc in zip(eager.parameters(), comp.parameters()):
            np.testing.assert_allclose(pc.numpy(), pe.numpy(), rtol=1e-12, atol=1e-14)


def test_an_eager_loop_records_each_step_into_an_arena_sized_by_the_last_step():
    """Each eager step records a new tape; it starts with the value arena the last backward
    sweep's tape needed (fastgrad/runtime/tape.py ``_start_capacity``), so an unchanged loop
    grows no buffer, and a step that records more still grows as it needs; the losses are the
    loop's."""
    rng = np.random.default_rng(0)
    model = fg.nn.MLP([5, 7, 3], seed=0)
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    x, y = rng.standard_normal((4, 5)), rng.integers(0, 3, 4)
    tapes, losses = [], []
    for _ in range(3):
        opt.zero_grad()
        loss = fg.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        tapes.append(loss.tape)
        losses.append(loss.item())
    needed = tapes[0].values.n
    assert [t.values.n for t in tapes] == [needed] * 3
    assert [t.values.a.size for t in tapes[1:]] == [needed, needed]  # one buffer, never grown
    assert losses[2] < losses[0]
    bigger = fg.cross_entropy(model(np.concatenate([x, x])), np.concatenate([y, y]))
    assert bigger.tape.values.n > needed  # grown past the hint as it needed
    np.testing.assert_allclose(bigger.item(), fg.cross_entropy(model(x), y).item(), rtol=1e-12)


def test_value_and_grad_without_optimizer_matches_backward():
    X, Y = small_problem(1)
    model = fg.nn.MLP([5, 4, 2], activation="sigmoid", seed=2)
    f = fg.compile(lambda x, y: fg.mse_loss(model(x), y))
    loss, grads = f(X, Y)
    fg.mse_loss(model(X), Y).backward()
    assert loss == pytest.approx(fg.mse_loss(model(X), Y).item(), rel=1e-13)
    for g, p in zip(grads, model.parameters()):
        np.testing.assert_allclose(g, p.grad, rtol=1e-12, atol=1e-15)


def test_parameters_are_views_of_one_flat_buffer():
    model = fg.nn.MLP([3, 4, 2], seed=0)
    opt = fg.optim.Adam(model.parameters())
    for p in model.parameters():
        assert np.shares_memory(p.numpy(), opt.flat)
    opt.flat[:] = 0.5
    assert all((p.numpy() == 0.5).all() for p in model.parameters())


def test_changing_the_batch_size_retraces_once_and_stays_correct(caplog):
    X, Y = small_problem(2)
    model = fg.nn.MLP([5, 6, 2], activation="tanh", seed=3)
    f = fg.compile(lambda x, y: fg.mse_loss(model(x), y))
    with caplog.at_level(logging.INFO, logger="fastgrad"):
        for n in (8, 8, 5, 5, 8):
            loss, _ = f(X[:n], Y[:n])
            assert loss == pytest.approx(fg.mse_loss(model(X[:n]), Y[:n]).item(), rel=1e-13)
    assert len(f.programs) == 2
    assert sum("tracing again" in r.message for r in caplog.records) == 1


def test_python_control_flow_is_frozen_at_trace_time_like_jax_jit():
    w = fg.nn.Parameter(np.array([1.0]))
    f = fg.compile(lambda x: (w * x).sum() if x.numpy()[0] > 0 else (w * x * 100).sum())
    assert f(np.array([1.0]))[0] == 1.0
    assert f(np.array([-1.0]))[0] == -1.0  # the traced branch, not the *100 one


def test_compiled_step_rejects_out_of_range_labels():
    model = fg.nn.MLP([4, 3], seed=0)
    f = fg.compile(lambda x, y: fg.cross_entropy(model(x), y))
    f(np.ones((2, 4)), np.array([0, 2]))
    with pytest.raises(fg.FastgradError, match=r"indices outside \[0, 3\)"):
        f(np.ones((2, 4)), np.array([0, 3]))


def test_float32_end_to_end():
    X, Y = small_problem(3)
    model = fg.nn.MLP([5, 8, 2], activation="relu", seed=4, dtype=np.float32)
    opt = fg.optim.AdamW(model.parameters(), lr=1e-2)
    step = fg.compile(lambda x, y: fg.mse_loss(model(x), y), optimizer=opt)
    losses = [step(X.astype(np.float32), Y.astype(np.float32)) for _ in range(50)]
    assert opt.flat.dtype == np.float32 and losses[-1] < losses[0]


# ----------------------------------------------------------------------------- optimizer rules
def numpy_rule(name, o):
    """PyTorch's documented update rules, written out in NumPy (float64)."""
    state = {}

    def sgd(p, g, t):
        g = g + o.get("weight_decay", 0) * p
        mu = o.get("momentum", 0)
        if mu:
            b = g if t == 1 else mu * state["b"] + (1 - o.get("dampening", 0)) * g
            state["b"] = b
            g = g + mu * b if o.get("nesterov") else b
        return p - o["lr"] * g

    def adagrad(p, g, t):
        g = g + o.get("weight_decay", 0) * p
        clr = o["lr"] / (1 + (t - 1) * o.get("lr_decay", 0))
        state["s"] = state.get("s", 0) + g * g
        return p - clr * g / (np.sqrt(state["s"]) + o.get("eps", 1e-10))

    def rmsprop(p, g, t):
        g = g + o.get("weight_decay", 0) * p
        a = o.get("alpha", 0.99)
        state["v"] = a * state.get("v", 0) + (1 - a) * g * g
        if o.get("centered"):
            state["ga"] = a * state.get("ga", 0) + (1 - a) * g
            avg = np.sqrt(state["v"] - state["ga"] ** 2) + o.get("eps", 1e-8)
        else:
            avg = np.sqrt(state["v"]) + o.get("eps", 1e-8)
        if o.get("momentum", 0) > 0:
            state["b"] = o["momentum"] * state.get("b", 0) + g / avg
            return p - o["lr"] * state["b"]
        return p - o["lr"] * g / avg

    def adam(p, g, t, decoupled=False):
        b1, b2 = o.get("betas", (0.9, 0.999))
        wd = o.get("weight_decay", 1e-2 if decoupled else 0.0)
        if decoupled:
            p = p * (1 - o["lr"] * wd)
        else:
            g = g + wd * p
        state["m"] = b1 * state.get("m", 0) + (1 - b1) * g
        state["v"] = b2 * state.get("v", 0) + (1 - b2) * g * g
        v = state["v"]
        if o.get("amsgrad"):
            state["vmax"] = np.maximum(state.get("vmax", 0), v)
            v = state["vmax"]
        denom = np.sqrt(v) / np.sqrt(1 - b2**t) + o.get("eps", 1e-8)
        return p - o["lr"] / (1 - b1**t) * state["m"] / denom

    return {"SGD": sgd, "Adagrad": adagrad, "RMSprop": rmsprop, "Adam": adam,
            "AdamW": lambda p, g, t: adam(p, g, t, decoupled=True)}[name]


OPTIMIZER_CASES = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=1e-2, weight_decay=1e-2, eps=1e-6)),
    ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-2, alpha=0.9, eps=1e-6, weight_decay=1e-2, momentum=0.5)),
    ("RMSprop", dict(lr=1e-3, centered=True, momentum=0.9)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, amsgrad=True, betas=(0.85, 0.95))),
]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name,options", OPTIMIZER_CASES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIMIZER_CASES)])
def test_optimizer_follows_pytorch_rule_for_300_steps(name, options, compiled):
    rng = np.random.default_rng(5)
    A = rng.normal(size=(6, 3))
    b = rng.normal(size=6)
    w = fg.nn.Parameter(rng.normal(size=3))
    opt = getattr(fg.optim, name)([w], **options)
    rule = numpy_rule(name, options)
    step = fg.compile(lambda: ((fg.tensor(A) @ w - b) ** 2).sum(), optimizer=opt)
    for t in range(1, 301):
        before = w.numpy().copy()
        if compiled:
            step()
            g = opt.flat_grad.copy()
        else:
            opt.zero_grad()
            ((fg.tensor(A) @ w - b) ** 2).sum().backward()
            g = w.grad.copy()
            opt.step()
        np.testing.assert_allclose(g, 2 * A.T @ (A @ before - b), rtol=1e-10, atol=1e-12)
        # the rule, fed the same parameters and gradient, gives the same update
        np.testing.assert_allclose(w.numpy(), rule(before, g, t), rtol=1e-13, atol=1e-15,
                                   err_msg=f"step {t}")


def test_clip_grad_norm_follows_pytorch_and_works_inside_a_compiled_step():
    w = fg.nn.Parameter(np.array([3.0, 4.0]))
    (w * fg.tensor([1.0, 1.0])).sum().backward()  # grad [1, 1], norm sqrt 2
    total = fg.nn.utils.clip_grad_norm_([w], 0.5)
    assert total == pytest.approx(np.sqrt(2))
    np.testing.assert_allclose(w.grad, np.array([1.0, 1.0]) * 0.5 / (np.sqrt(2) + 1e-6))
    w.grad = np.array([5.0, -0.1])
    fg.nn.utils.clip_grad_value_([w], 1.0)
    np.testing.assert_allclose(w.grad, [1.0, -0.1])
    # compiled: SGD lr=1 moves the parameter by exactly the clipped gradient
    v = fg.nn.Parameter(np.array([0.0, 0.0]))
    opt = fg.optim.SGD([v], lr=1.0)
    step = fg.compile(lambda: (v * fg.tensor([30.0, 40.0])).sum(), optimizer=opt,
                      clip_grad_norm=5.0)
    step()
    assert step.last_grad_norm == pytest.approx(50.0)
    np.testing.assert_allclose(v.numpy(), -np.array([30.0, 40.0]) * 5.0 / (50.0 + 1e-6))


def test_lr_schedules():
    w = fg.nn.Parameter(np.zeros(1))
    opt = fg.optim.SGD([w], lr=1.0)
    sched = fg.optim.StepLR(opt, step_size=2, gamma=0.5)
    lrs = []
    for _ in range(5):
        sched.step()
        lrs.append(opt.lr)
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25]
    opt2 = fg.optim.SGD([fg.nn.Parameter(np.zeros(1))], lr=1.0)
    cos = fg.optim.CosineAnnealingLR(opt2, T_max=4)
    got = []
    for _ in range(4):
        cos.step()
        got.append(opt2.lr)
    np.testing.assert_allclose(got, [(1 + np.cos(np.pi * e / 4)) / 2 for e in range(1, 5)])


def test_optimizer_state_dict_round_trips_and_resumes_the_same_trajectory():
    def run(steps, resume_at=None):
        w = fg.nn.Parameter(np.array([1.0, -2.0, 0.5]))
        opt = fg.optim.Adam([w], lr=0.05, amsgrad=True)
        for t in range(steps):
            if t == resume_at:
                saved_w, saved = w.numpy().copy(), opt.state_dict()
                w = fg.nn.Parameter(saved_w)
                opt = fg.optim.Adam([w], lr=0.05)
                opt.load_state_dict(saved)
            opt.zero_grad()
            (w**4).sum().backward()
            opt.step()
        return w.numpy()

    np.testing.assert_array_equal(run(20), run(20, resume_at=7))


# ----------------------------------------------------------------------------- initialisers
def test_initialisers_are_seeded_and_have_their_documented_scale():
    shape = (400, 300)
    init = fg.nn.init
    a = init.kaiming_uniform(shape, seed=0)
    np.testing.assert_array_equal(a, init.kaiming_uniform(shape, seed=0))
    assert np.abs(a).max() <= np.sqrt(2) * np.sqrt(3 / 300)
    assert init.kaiming_normal(shape, seed=1).std() == pytest.approx(np.sqrt(2 / 300), rel=0.02)
    assert init.xavier_normal(shape, seed=2).std() == pytest.approx(np.sqrt(2 / 700), rel=0.02)
    assert np.abs(init.xavier_uniform(shape, seed=3)).max() <= np.sqrt(6 / 700)
    assert init.normal(shape, std=0.3, seed=4).std() == pytest.approx(0.3, rel=0.02)
    q = init.orthogonal((50, 80), seed=5)
    np.testing.assert_allclose(q @ q.T, np.eye(50), atol=1e-12)
    m1 = fg.nn.MLP([3, 5, 2], init="orthogonal", seed=9)
    m2 = fg.nn.MLP([3, 5, 2], init="orthogonal", seed=9)
    for (n1, p1), (n2, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert n1 == n2
        np.testing.assert_array_equal(p1.numpy(), p2.numpy())


def test_module_state_dict_round_trip_and_unbiased_mlp():
    m = fg.nn.MLP([4, 6, 3], bias=False, seed=0)
    assert [n for n, _ in m.named_parameters()] == ["layers.0.weight", "layers.1.weight"]
    assert m.layers[0].weight.shape == (6, 4)  # PyTorch layout (out, in)
    other = fg.nn.MLP([4, 6, 3], bias=False, seed=1)
    other.load_state_dict(m.state_dict())
    x = np.random.default_rng(0).normal(size=(2, 4))
    np.testing.assert_array_equal(other(x).numpy(), m(x).numpy())
    with pytest.raises(fg.FastgradError, match="missing keys"):
        other.load_state_dict({})


# ----------------------------------------------------------------------------- fit
def test_fit_trains_an_mlp_on_real_handwritten_digits_to_95_percent():
    Xtr, ytr, Xte, yte = load_digits()
    model = fg.nn.MLP([64, 64, 10], activation="relu", seed=0, dtype=np.float32)
    opt = fg.optim.Adam(model.parameters(), lr=3e-3)
    step = fg.compile(lambda xb, yb: fg.cross_entropy(model(xb), yb), optimizer=opt)
    hist = fg.fit(step, Xtr, ytr, epochs=15, batch_size=32, seed=0, progress=False)
    assert hist.loss[-1] < hist.loss[0] and hist.accuracy[-1] > 0.95
    with fg.no_grad():
        acc = (model(Xte).numpy().argmax(axis=1) == yte).mean()
    assert acc >= 0.95, acc


def test_fit_equals_the_same_steps_taken_one_call_at_a_time():
    X, Y = small_problem(4, n=50)
    runs = []
    for mode in ("fit", "loop"):
        model = fg.nn.MLP([5, 7, 2], activation="tanh", seed=5)
        opt = fg.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step = fg.compile(lambda x, y: fg.mse_loss(model(x), y), optimizer=opt)
        if mode == "fit":
            hist = fg.fit(step, X, Y, epochs=3, batch_size=16, seed=11, progress=False)
            losses = hist.loss
        else:
            rng = np.random.default_rng(11)
            losses = []
            for _ in range(3):
                perm = rng.permutation(50)
                total = 0.0
                for k in range(0, 50, 16):
                    idx = perm[k : k + 16]
                    total += step(X[idx], Y[idx]) * len(idx)
                losses.append(total / 50)
        runs.append((losses, opt.flat.copy()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-12)
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-12)


def test_integer_input_used_as_floats_in_a_compiled_function_is_cast_as_in_eager_ops():
    """An integer input is traced as an index slot; used in float arithmetic, it is traced
    again as floats and cast each call, as eager ops cast it (one input rule)."""
    w = fg.nn.Parameter(np.array([1.0, 2.0]))
    f = fg.compile(lambda x, y: ((x @ w - y) ** 2).sum())
    x = np.array([[1.0, 1.0], [2.0, 0.0]])
    for y in (np.array([3, 5]), np.array([3.0, 5.0]), np.array([3, 5], np.uint8)):
        loss, (g,) = f(x, y)
        assert loss == 9.0 and g.tolist() == [-12.0, 0.0]
    assert ((x @ w - np.array([3, 5])) ** 2).sum().item() == 9.0  # eager: the same


@pytest.mark.parametrize("big", [False, True], ids=["small-matmul", "blas-matmul"])
def test_a_row_after_the_loss_that_reads_it_keeps_the_seed_gradient(big):
    """A diagnostic recorded after the loss (aux = loss @ V) must not overwrite the loss's
    seed gradient in the compiled backward sweep (both matmul paths)."""
    rng = np.random.default_rng(0)
    n = 200 if big else 2
    W = fg.nn.Parameter(rng.standard_normal((3, 1)))
    V = fg.nn.Parameter(rng.standard_normal((1, n)))
    U = fg.nn.Parameter(rng.standard_normal((n, 200)))

    def f(x):
        loss = x @ W
        _aux = (loss @ V) @ U  # unused, recorded after the loss
        return loss

    x = rng.standard_normal((1, 3))
    loss, (gW, gV, gU) = fg.compile(f, params=[W, V, U])(x)
    np.testing.assert_allclose(gW.ravel(), x.ravel(), rtol=1e-12)
    assert not gV.any() and not gU.any()


@pytest.mark.parametrize("with_tqdm", [True, False], ids=["tqdm", "plain-text"])
def test_fit_reports_progress_per_epoch_with_and_without_tqdm(with_tqdm, monkeypatch, capsys):
    import builtins

    if not with_tqdm:
        real_import = builtins.__import__

        def no_tqdm(name, *args, **kwargs):
            if name.startswith("tqdm"):
                raise ImportError(name)
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_tqdm)
    else:
        pytest.importorskip("tqdm")
    model = fg.nn.MLP([4, 8, 3], seed=0)
    step = fg.compile(lambda x, y: fg.cross_entropy(model(x), y),
                      optimizer=fg.optim.SGD(model.parameters(), lr=0.1))
    X = np.random.default_rng(0).normal(size=(20, 4))
    Y = np.arange(20) % 3
    history = fg.fit(step, X, Y, epochs=2, batch_size=8, seed=0, progress=True)
    assert len(history.loss) == 2
    err = capsys.readouterr().err
    assert ("2/2" in err) if with_tqdm else ("epoch 2/2: loss" in err)


def test_compiling_over_an_eager_graph_leaves_that_graph_as_recorded():
    # W2 and extra are recorded eagerly; the traced program merges their tape and rewrites its
    # own parameter nodes, which must not change what extra.backward() computes afterwards
    lin = fg.nn.Linear(3, 1, seed=0, dtype=np.float64)
    w0 = lin.weight.numpy().copy()
    W2 = lin.weight * 2.0
    extra = (W2 * W2).sum()
    opt = fg.optim.SGD(lin.parameters(), lr=0.1)
    step = fg.compile(lambda x, y: (((x @ W2.T) - y) ** 2).mean(), optimizer=opt)
    step(np.ones((4, 3)), np.zeros((4, 1)))
    assert not np.array_equal(lin.weight.numpy(), w0)  # the step did update the weight
    lin.weight.grad = None
    extra.backward()
    np.testing.assert_allclose(lin.weight.grad, 8.0 * w0, rtol=1e-14)


def test_the_input_is_read_in_place_and_any_layout_gives_the_same_step():
    # The first input is read where it lies when it has the model's dtype and is C-contiguous
    # and writeable; a Fortran-ordered, strided or read-only array is copied first. Either way
    # the step is the same, and the caller's array is never written.
    X, Y = small_problem(4, n=16)
    model = fg.nn.MLP([5, 6, 2], activation="relu", seed=4)
    f = fg.compile(lambda x, y: fg.mse_loss(model(x), y))
    ref_loss, ref_grads = f(X[:8].copy(), Y[:8])
    wide = np.zeros((8, 10))
    wide[:, ::2] = X[:8]
    read_only = X[:8].copy()
    read_only.flags.writeable = False
    for x in (X[:8], np.asfortranarray(X[:8]), wide[:, ::2], read_only):
        before = x.copy()
        loss, grads = f(x, Y[:8])
        assert loss == ref_loss
        for g, r in zip(grads, ref_grads):
            np.testing.assert_array_equal(g, r)
        np.testing.assert_array_equal(x, before)
    other_loss, _ = f(X[8:], Y[8:])  # other values at the same signature: not a stale read
    assert other_loss == pytest.approx(fg.mse_loss(model(X[8:]), Y[8:]).item(), rel=1e-13)
    assert len(f.programs) == 1


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_a_training_step_takes_any_input_layout_and_lr_change_at_native_speed():
    # After its first call a training step calls the kernel's native entry directly (no
    # per-call type dispatch). Inputs of any layout, read-only, unaligned or an ndarray
    # subclass are normalised before that call, and an lr change (a new hyper-parameter array)
    # is honoured: every step equals the eager engine's step on the same values.
    rng = np.random.default_rng(6)

    def unaligned(X):
        u = np.frombuffer(bytearray(X.nbytes + 1), np.float64, X.size, 1).reshape(X.shape)
        u[...] = X
        assert not u.flags.aligned and u.flags.writeable
        return u

    def read_only(X):
        r = X.copy()
        r.flags.writeable = False
        return r

    def strided(X):
        wide = np.zeros((8, 10))
        wide[:, ::2] = X
        return wide[:, ::2]

    layouts = [np.array, np.asfortranarray, strided, read_only, unaligned, np.asmatrix, np.array]
    Y = rng.normal(size=(8, 2))
    eager_model = fg.nn.MLP([5, 6, 2], activation="tanh", seed=2)
    model = fg.nn.MLP([5, 6, 2], activation="tanh", seed=2)
    eager_opt = fg.optim.SGD(eager_model.parameters(), lr=0.1, momentum=0.9)
    opt = fg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = fg.compile(lambda x, y: fg.mse_loss(model(x), y), optimizer=opt)
    for i, layout in enumerate(layouts):
        X = rng.normal(size=(8, 5))
        x = layout(X)
        if i == 3:
            eager_opt.lr = opt.lr = 0.05
        loss = step(x, Y)
        eager_opt.zero_grad()
        want = fg.mse_loss(eager_model(fg.tensor(X)), Y)
        want.backward()
        eager_opt.step()
        assert loss == pytest.approx(want.item(), rel=1e-13), layout
        np.testing.assert_allclose(opt.flat, eager_opt.flat, rtol=1e-13, atol=1e-15)
        np.testing.assert_array_equal(np.asarray(x), X)  # the caller's array is never written
    assert step._last._entry is not None and len(step.programs) == 1


def test_clip_settings_changed_between_steps_keep_their_values():
    # The native entry is typed on its first call: an int max_norm must not make it an integer
    # argument that would truncate a later 0.5 to 0 (no clipping).
    v = fg.nn.Parameter(np.array([0.0, 0.0]))
    opt = fg.optim.SGD([v], lr=1.0)
    step = fg.compile(lambda: (v * fg.tensor([30.0, 40.0])).sum(), optimizer=opt,
                      clip_grad_norm=5.0)
    direction = -np.array([0.6, 0.8])  # the gradient [30, 40] has norm 50
    step()
    np.testing.assert_allclose(v.numpy(), direction * 5.0 * 50 / (50 + 1e-6))
    step.max_norm, opt.lr = 1, 0.5  # an int, and a new hyper array: the dispatcher runs again
    before = v.numpy().copy()
    step()
    np.testing.assert_allclose(v.numpy() - before, direction * 0.5 * 50 / (50 + 1e-6))
    step.max_norm = 0.5
    before = v.numpy().copy()
    step()
    np.testing.assert_allclose(v.numpy() - before, direction * 0.25 * 50 / (50 + 1e-6))


def test_integer_inputs_of_any_integer_dtype_and_layout_load_as_indices():
    w = fg.nn.Parameter(np.linspace(-1.0, 1.0, 12).reshape(3, 4))
    step = fg.compile(lambda x, y: fg.cross_entropy(x @ w, y))
    x = np.arange(6.0).reshape(2, 3)
    want = step(x, np.array([1, 3]))
    for y in (np.array([1, 3], np.int32), np.array([1, 9, 3, 9], np.uint8)[::2],
              np.array([[1], [3]])[:, 0]):
        loss, grads = step(x, y)
        assert loss == want[0]
        np.testing.assert_array_equal(grads[0], want[1][0])
    with pytest.raises(fg.FastgradError, match=r"input 1 holds indices outside \[0, 4\)"):
        step(x, np.array([0, 4], np.int32))
    with pytest.raises(fg.FastgradError, match=r"input 1 holds indices outside \[0, 4\)"):
        step(x, np.array([-1, 0]))
    # with an optimizer (the native entry path), three steps on labels of other dtypes and
    # layouts move the weights exactly as int64 labels do
    w1, w2 = (fg.nn.Parameter(np.linspace(-1.0, 1.0, 12).reshape(3, 4)) for _ in range(2))
    s1 = fg.compile(lambda x, y: fg.cross_entropy(x @ w1, y), optimizer=fg.optim.SGD([w1], lr=0.1))
    s2 = fg.compile(lambda x, y: fg.cross_entropy(x @ w2, y), optimizer=fg.optim.SGD([w2], lr=0.1))
    for labels in ([1, 3], [0, 2], [3, 3]):
        assert s1(x, np.array(labels)) == s2(x, np.array(labels, np.int32)[::-1][::-1])
        np.testing.assert_array_equal(w1.numpy(), w2.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plain_sgd_updates_in_the_parameters_dtype(dtype):
    # Like torch.optim.SGD without momentum or weight decay (p.add_(g, alpha=-lr)): lr rounded
    # to the parameters' dtype, the product and the difference in that dtype, each rounded.
    rng = np.random.default_rng(3)
    p0 = rng.normal(size=1000).astype(dtype)
    g = rng.normal(size=1000).astype(dtype)
    lr = 0.1234567
    w = fg.nn.Parameter(p0.copy())
    opt = fg.optim.SGD([w], lr=lr)
    w.grad = g.copy()
    opt.step()
    want = p0 - dtype(lr) * g
    np.testing.assert_array_equal(w.numpy(), want)
    if dtype == np.float32:  # what float64 arithmetic rounded once would give differs
        assert (want != (p0.astype(np.float64) - lr * g.astype(np.float64)).astype(dtype)).any()
    # the compiled step runs the same loop
    v = fg.nn.Parameter(p0.copy())
    step = fg.compile(lambda: (v * fg.tensor(g)).sum(), optimizer=fg.optim.SGD([v], lr=lr))
    step()
    np.testing.assert_array_equal(v.numpy(), want)


@pytest.mark.parametrize("loss_name", ["mse", "mse_1d", "cross_entropy"])
def test_targets_and_labels_of_any_layout_load_natively_and_match_the_eager_step(loss_name):
    # The native entry itself loads the float target or the integer labels. On every call
    # after the first (the per-step path) targets and labels of another layout or read-only
    # are converted first (1-D ones, passed to the entry as they are, by the general path
    # when the entry finds them strided): each step equals the eager engine's step on the
    # same values.
    rng = np.random.default_rng(8)

    def strided(A):
        wide = np.zeros((A.shape[0], 2) + A.shape[1:], A.dtype)
        wide[:, 0] = A
        return wide[:, 0]

    def read_only(A):
        r = A.copy()
        r.flags.writeable = False
        return r

    layouts = [np.array, strided, read_only, np.asfortranarray, np.array]
    outputs = 1 if loss_name == "mse_1d" else 3
    eager_model = fg.nn.MLP([5, 6, outputs], activation="tanh", seed=3)
    model = fg.nn.MLP([5, 6, outputs], activation="tanh", seed=3)
    eager_opt = fg.optim.Adam(eager_model.parameters(), lr=0.05)
    opt = fg.optim.Adam(model.parameters(), lr=0.05)
    loss_fn = {"mse": fg.mse_loss, "cross_entropy": fg.cross_entropy,
               "mse_1d": lambda out, y: fg.mse_loss(out.reshape(-1), y)}[loss_name]
    step = fg.compile(lambda x, y: loss_fn(model(x), y), optimizer=opt)
    for layout in layouts:
        X = rng.normal(size=(8, 5))
        Y = {"mse": rng.normal(size=(8, 3)), "mse_1d": rng.normal(size=8),
             "cross_entropy": rng.integers(0, 3, 8)}[loss_name]
        y = layout(Y)
        loss = step(X, y)
        eager_opt.zero_grad()
        want = loss_fn(eager_model(fg.tensor(X)), Y)
        want.backward()
        eager_opt.step()
        assert loss == pytest.approx(want.item(), rel=1e-13), layout
        np.testing.assert_allclose(opt.flat, eager_opt.flat, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(y, Y)  # the caller's array is never written
    assert step._fast is not None and len(step.programs) == 1


def test_a_float32_target_for_a_float64_model_is_refused_as_in_eager_ops():
    # one input rule for both paths (fastgrad.tensor.input_dtype_problem): no silent cast
    X, Y = small_problem(9, n=8)
    model = fg.nn.MLP([5, 4, 2], seed=0)
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    step = fg.compile(lambda x, y: fg.mse_loss(model(x), y), optimizer=opt)
    y32 = Y.astype(np.float32)
    with pytest.raises(fg.FastgradError, match=r"operands have dtypes float32 and float64"):
        fg.mse_loss(model(fg.tensor(X)), y32)
    with pytest.raises(fg.FastgradError, match=r"compile: input 1 \(shape \(8, 2\)\): dtype "
                       r"float32 for a float64 computation. Fix: cast it with "
                       r"\.astype\(np\.float64\)"):
        step(X, y32)
    assert step(X, y32.astype(np.float64)) == pytest.approx(
        fg.mse_loss(fg.nn.MLP([5, 4, 2], seed=0)(X), y32.astype(np.float64)).item(), rel=1e-13)


def test_optimizer_options_changed_in_place_reach_the_compiled_step():
    # PyTorch users change param_groups[0]["lr"] in place; here opt.options is that dict.
    # Every way of changing it (item, update, a new dict) reaches the next compiled step, which
    # follows torch.optim.SGD's rule written out in NumPy with the options of that step.
    X, Y = small_problem(10, n=8)
    ref_model = fg.nn.MLP([5, 4, 2], seed=5)
    model = fg.nn.MLP([5, 4, 2], seed=5)
    loss_and_grads = fg.compile(lambda x, y: fg.mse_loss(ref_model(x), y))
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    step = fg.compile(lambda x, y: fg.mse_loss(model(x), y), optimizer=opt)
    changes = [lambda o: None, lambda o: o.options.__setitem__("lr", 0.02),
               lambda o: o.options.update(momentum=0.9), lambda o: None,
               lambda o: setattr(o, "options", dict(o.options, weight_decay=0.1)),
               lambda o: o.options.__ior__({"lr": 0.03}), lambda o: None]
    bufs = [None] * len(ref_model.parameters())
    for change in changes:
        change(opt)
        o = opt.options
        step(X, Y)
        _, grads = loss_and_grads(X, Y)
        for i, (p, g) in enumerate(zip(ref_model.parameters(), grads)):
            w = p.numpy()
            g = g + o["weight_decay"] * w
            if o["momentum"]:
                bufs[i] = g.copy() if bufs[i] is None else o["momentum"] * bufs[i] + g
                g = bufs[i]
            w -= o["lr"] * g
        want = np.concatenate([p.numpy().ravel() for p in ref_model.parameters()])
        np.testing.assert_allclose(opt.flat, want, rtol=1e-12, atol=1e-15)
    assert opt.options["weight_decay"] == 0.1 and opt.options["momentum"] == 0.9
    assert opt.options["lr"] == 0.03 and step._fast is not None


def test_hyper_parameters_of_any_number_type_reach_the_step_as_float64():
    from fractions import Fraction

    w = fg.nn.Parameter(np.array([1.0, -2.0]))
    opt = fg.optim.SGD([w], lr=0.1)
    step = fg.compile(lambda: (w * w).sum(), optimizer=opt)
    step()
    step()  # the per-step path from here
    for lr in (Fraction(1, 10), np.float32(0.25), 1):
        opt.options["lr"] = lr
        before = w.numpy().copy()
        step()
        np.testing.assert_allclose(w.numpy(), before - float(lr) * 2 * before, rtol=1e-7)
    assert opt.hyper().dtype == np.float64


def test_a_copied_optimizer_owns_its_block_and_its_parameters_view_it():
    import copy

    model = fg.nn.MLP([3, 4, 2], seed=0)
    opt = fg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    twin = copy.deepcopy(opt)
    for o in (opt, twin):
        assert np.shares_memory(o.flat, o.buffers) and np.shares_memory(o.state[2], o.buffers)
        for p in o.params:
            assert np.shares_memory(p.numpy(), o.flat)
    assert not np.shares_memory(twin.buffers, opt.buffers)
    x, y = np.ones((2, 3)), np.array([0, 1])
    step = fg.compile(lambda a, b: fg.cross_entropy(model(a), b), optimizer=opt)
    before = twin.flat.copy()
    for _ in range(3):
        step(x, y)
    np.testing.assert_array_equal(twin.flat, before)


def test_optimizer_buffers_are_rows_of_one_block_fixed_for_its_life():
    model = fg.nn.MLP([3, 4, 2], seed=0)
    opt = fg.optim.Adam(model.parameters())
    assert opt.buffers.shape == (5, opt.flat.size)
    for row, buf in zip(opt.buffers, (opt.flat, opt.flat_grad, *opt.state)):
        assert np.shares_memory(row, buf) and row.size == buf.size
    for name in ("flat", "flat_grad", "state", "buffers"):
        with pytest.raises(AttributeError):
            setattr(opt, name, np.zeros(3))


def test_out_of_range_labels_on_the_per_step_path_change_nothing():
    model = fg.nn.MLP([4, 3], seed=0)
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    step = fg.compile(lambda x, y: fg.cross_entropy(model(x), y), optimizer=opt)
    x = np.ones((2, 4))
    step(x, np.array([0, 2]))
    step(x, np.array([1, 2]))
    before, t = opt.flat.copy(), opt.t
    with pytest.raises(fg.FastgradError, match=r"input 1 holds indices outside \[0, 3\)"):
        step(x, np.array([0, 3]))
    with pytest.raises(fg.FastgradError, match=r"input 1 holds indices outside \[0, 3\)"):
        step(x, np.array([-1, 0]))
    np.testing.assert_array_equal(opt.flat, before)
    assert opt.t == t
    step(x, np.array([2, 0]))
    assert opt.t == t + 1 and not np.array_equal(opt.flat, before)


def test_a_per_step_call_that_does_not_fit_the_signature_takes_the_general_path():
    # Once a program has run, a call goes straight to its per-step function, which checks
    # the (x, y) pair itself: the type, the shape and the dtype of each (an equal dtype that
    # is not NumPy's own object fits). Anything else goes the general path (converted, or
    # traced again), and every step equals the eager engine's step on the same values.
    rng = np.random.default_rng(21)
    model, eager_model = (fg.nn.MLP([4, 5, 3], activation="tanh", seed=2) for _ in range(2))
    opt, eager_opt = fg.optim.SGD(model.parameters(), lr=0.1), fg.optim.SGD(
        eager_model.parameters(), lr=0.1)
    step = fg.compile(lambda x, y: fg.cross_entropy(model(x), y), optimizer=opt)
    same_float64 = np.dtype(">f8").newbyteorder("<")
    assert same_float64 == np.float64 and same_float64 is not np.dtype(np.float64)
    calls = [lambda X, Y: (X, Y), lambda X, Y: (X, Y),  # the per-step path from here
             lambda X, Y: (X.tolist(), Y), lambda X, Y: (X, Y.tolist()),
             lambda X, Y: (X.astype(same_float64), Y), lambda X, Y: (X, Y.astype(np.int32)),
             lambda X, Y: (X[:4], Y[:4]), lambda X, Y: (X, Y)]
    for i, call in enumerate(calls):
        X, Y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
        x, y = call(X, Y)
        loss = step(x, y)
        eager_opt.zero_grad()
        want = fg.cross_entropy(eager_model(fg.tensor(np.asarray(x, np.float64))), np.asarray(y))
        want.backward()
        eager_opt.step()
        assert loss == pytest.approx(want.item(), rel=1e-13), i
        np.testing.assert_allclose(opt.flat, eager_opt.flat, rtol=1e-12,
                                   atol=1e-15)
    assert step._fast is not None and len(step.programs) == 3
    before = opt.flat.copy()
    with pytest.raises(fg.FastgradError, match="dtype float32 for a float64 computation"):
        step(X.astype(np.float32), Y)  # the input rule of eager ops: no silent cast
    for x, y in ((X[:4], Y), (X, Y[:4])):  # one input's shape alone: an error, not a step
        with pytest.raises(fg.FastgradError, match="cross_entropy"):
            step(x, y)
    with pytest.raises(TypeError):
        step(X)  # the traced function takes two inputs
    np.testing.assert_array_equal(opt.flat, before)


def test_the_per_step_path_loads_extra_inputs_and_frozen_leaves_in_python():
    # The native entry loads one float and one integer input; a second of each, and a leaf
    # that is not among the optimizer's parameters (frozen: its current value is copied in
    # every step), are loaded in Python on the per-step path too.
    rng = np.random.default_rng(13)
    W0, V0 = rng.normal(size=(4, 3)), rng.normal(size=3)
    W, V = fg.nn.Parameter(W0.copy()), fg.nn.Parameter(V0.copy())
    eW, eV = fg.nn.Parameter(W0.copy()), fg.nn.Parameter(V0.copy())

    def loss_fn(x, target, scale, labels, idx, W=W, V=V):
        logits = x @ W + V
        picked = fg.take(logits, idx, axis=1)
        return fg.cross_entropy(logits, labels) + fg.mse_loss(picked * scale, target)

    opt, eopt = fg.optim.SGD([W], lr=0.1), fg.optim.SGD([eW], lr=0.1)
    step = fg.compile(loss_fn, optimizer=opt)
    for i in range(4):
        x, target, scale = rng.normal(size=(6, 4)), rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
        labels, idx = rng.integers(0, 3, 6), rng.integers(0, 3, 2)
        V.numpy()[...] = eV.numpy()[...] = rng.normal(size=3)  # the frozen leaf changes
        loss = step(x, target, scale, labels, idx)
        eopt.zero_grad()
        want = loss_fn(fg.tensor(x), target, scale, labels, idx, eW, eV)
        want.backward()
        eopt.step()
        assert loss == pytest.approx(want.item(), rel=1e-13), i
        np.testing.assert_allclose(W.numpy(), eW.numpy(), rtol=1e-13, atol=1e-15)
    prog = step._last
    assert prog.python_copy and prog.python_index and prog.frozen
    assert step._fast is not None and len(step.programs) == 1
    with pytest.raises(fg.FastgradError, match=r"input 4 holds indices outside \[0, 3\)"):
        step(x, target, scale, labels, np.array([0, 3]))


def _digits_step(seed=0):
    from fastgrad.datasets import load_digits

    X, y, Xte, yte = load_digits()
    model = fg.nn.MLP([64, 16, 10], seed=seed, dtype=np.float32)
    opt = fg.optim.SGD(model.parameters(), lr=0.1)
    step = fg.compile(lambda a, b: fg.cross_entropy(model(a), b), optimizer=opt)
    return model, step, (X[:256], y[:256], Xte[:100], yte[:100])


def test_successive_fits_continue_the_shuffle_instead_of_repeating_it():
    model_a, step_a, (X, y, _, _) = _digits_step()
    fg.fit(step_a, X, y, epochs=1, batch_size=32, progress=False)
    fg.fit(step_a, X, y, epochs=1, batch_size=32, progress=False)
    model_b, step_b, _ = _digits_step()
    fg.fit(step_b, X, y, epochs=2, batch_size=32, progress=False)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # one continued stream
    model_c, step_c, _ = _digits_step()
    first = fg.fit(step_c, X, y, epochs=1, batch_size=32, progress=False, seed=0).loss
    again = fg.fit(step_c, X, y, epochs=1, batch_size=32, progress=False, seed=0).loss
    assert first != again  # trained further either way; an explicit seed restarts its order


def test_fit_reports_validation_loss_and_callbacks_can_stop_it():
    model, step, (X, y, Xv, yv) = _digits_step()
    calls = []

    def stop_at_three(epoch, history):
        calls.append((epoch, len(history.val_loss)))
        return epoch == 2

    h = fg.fit(step, X, y, epochs=10, batch_size=32, progress=False, validation_data=(Xv, yv),
               callbacks=[stop_at_three])
    assert calls == [(0, 1), (1, 2), (2, 3)] and len(h.loss) == 3
    with fg.no_grad():  # the loss function on the validation batches, after the last update
        want = sum(fg.cross_entropy(model(Xv[i : i + 32]), yv[i : i + 32]).item()
                   * len(yv[i : i + 32]) for i in range(0, 100, 32)) / 100
    assert h.val_loss[-1] == pytest.approx(want, rel=1e-5)
    with pytest.raises(fg.FastgradError, match="callbacks must be functions"):
        fg.fit(step, X, y, callbacks=[1], progress=False)
