"""fg.scan and the recurrent layers: a loop recorded once, run natively T times."""

import functools
import math

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.ops import LINEAR_ACTIVATIONS


def sig(x):
    return 1 / (1 + np.exp(-x))


def numpy_rnn(x, h, Wih, Whh, bih, bhh, act=np.tanh):
    hs = []
    for t in range(x.shape[0]):
        h = act(x[t] @ Wih.T + bih + h @ Whh.T + bhh)
        hs.append(h)
    return np.stack(hs), h


def numpy_rnn_grads(x, h0, Wih, Whh, bih, bhh, g_hs):
    """Hand-written BPTT for tanh Elman, loss = sum(g_hs * hs)."""
    hs, _ = numpy_rnn(x, h0, Wih, Whh, bih, bhh)
    gWih, gWhh, gb, gx = np.zeros_like(Wih), np.zeros_like(Whh), np.zeros_like(bih), np.zeros_like(x)
    gh = np.zeros_like(h0)
    for t in range(x.shape[0] - 1, -1, -1):
        gh = gh + g_hs[t]
        gz = gh * (1 - hs[t] ** 2)
        prev = hs[t - 1] if t > 0 else h0
        gWih += gz.T @ x[t]
        gWhh += gz.T @ prev
        gb += gz.sum(axis=0)
        gx[t] = gz @ Wih
        gh = gz @ Whh
    return gWih, gWhh, gb, gx, gh


def numpy_lstm(x, h, c, Wih, Whh, bih, bhh):
    H = h.shape[1]
    hs = []
    for t in range(x.shape[0]):
        z = x[t] @ Wih.T + bih + h @ Whh.T + bhh
        i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
    return np.stack(hs), h, c


def numpy_gru(x, h, Wih, Whh, bih, bhh):
    H = h.shape[1]
    hs = []
    for t in range(x.shape[0]):
        xp, hp = x[t] @ Wih.T + bih, h @ Whh.T + bhh
        r, z = sig(xp[:, :H] + hp[:, :H]), sig(xp[:, H:2 * H] + hp[:, H:2 * H])
        n = np.tanh(xp[:, 2 * H:] + r * hp[:, 2 * H:])
        h = (1 - z) * n + z * h
        hs.append(h)
    return np.stack(hs), h


def weights(m):
    return [p.numpy() for p in m.parameters()]


def test_rnn_forward_and_bptt_match_hand_written_numpy():
    rng = np.random.default_rng(0)
    rnn = fg.nn.RNN(3, 5, seed=1)
    x = rng.normal(size=(12, 2, 3))
    h0 = rng.normal(size=(2, 5)) * 0.1
    hs, h_T = rnn(x, fg.tensor(h0, requires_grad=True))
    ref_hs, ref_h = numpy_rnn(x, h0, *weights(rnn))
    np.testing.assert_allclose(hs.numpy(), ref_hs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_T.numpy(), ref_h, rtol=1e-12, atol=1e-14)
    g = rng.normal(size=ref_hs.shape)
    xt, h0t = fg.tensor(x, requires_grad=True), fg.tensor(h0, requires_grad=True)
    hs, _ = rnn(xt, h0t)
    (hs * g).sum().backward()
    gWih, gWhh, gb, gx, gh0 = numpy_rnn_grads(x, h0, *weights(rnn), g)
    np.testing.assert_allclose(rnn.weight_ih_l0.grad, gWih, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rnn.weight_hh_l0.grad, gWhh, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rnn.bias_ih_l0.grad, gb, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rnn.bias_hh_l0.grad, gb, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(xt.grad, gx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h0t.grad, gh0, rtol=1e-10, atol=1e-12)


def test_lstm_and_gru_forward_match_numpy_with_pytorch_gate_order():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 3, 4))
    lstm = fg.nn.LSTM(4, 6, seed=2)
    h0, c0 = rng.normal(size=(3, 6)) * 0.1, rng.normal(size=(3, 6)) * 0.1
    hs, (h, c) = lstm(x, (h0, c0))
    rhs, rh, rc = numpy_lstm(x, h0, c0, *weights(lstm))
    for a, b in ((hs, rhs), (h, rh), (c, rc)):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-12, atol=1e-14)
    gru = fg.nn.GRU(4, 6, seed=3)
    hs, h = gru(x, h0)
    rhs, rh = numpy_gru(x, h0, *weights(gru))
    np.testing.assert_allclose(hs.numpy(), rhs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h.numpy(), rh, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", [fg.nn.RNN, fg.nn.LSTM, fg.nn.GRU])
def test_recurrent_gradients_pass_gradcheck(cls):
    rng = np.random.default_rng(4)
    m = cls(2, 3, seed=5)
    x = rng.normal(size=(6, 2, 2))
    names = ["weight_ih_l0", "weight_hh_l0", "bias_hh_l0"]

    def fn(xt, *ws):
        for n, w in zip(names, ws):
            object.__setattr__(m, n, w)
        hs, _ = m(xt)
        return (hs * hs).sum()

    original = [getattr(m, n) for n in names]
    try:
        assert fg.gradcheck(fn, [x] + [w.numpy() for w in original]) <= 1.0
    finally:
        for n, w in zip(names, original):
            object.__setattr__(m, n, w)


def test_batch_first_and_unbatched_inputs():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(7, 2, 3))
    a = fg.nn.GRU(3, 4, seed=0)
    b = fg.nn.GRU(3, 4, seed=0, batch_first=True)
    hs_a, h_a = a(x)
    hs_b, h_b = b(x.transpose(1, 0, 2))
    np.testing.assert_allclose(hs_b.numpy(), hs_a.numpy().transpose(1, 0, 2), rtol=1e-13)
    hs_u, h_u = a(x[:, 0])
    np.testing.assert_allclose(hs_u.numpy(), hs_a.numpy()[:, 0], rtol=1e-13)
    assert h_u.shape == (4,)


def test_checkpointing_gives_bit_identical_gradients_on_1000_steps():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1000, 1, 4))
    W = rng.normal(size=(8, 8)) * 0.4
    U = rng.normal(size=(8, 4)) * 0.4
    grads = []
    for ck in (None, "sqrt", 7, 1000):
        w, u = fg.tensor(W, requires_grad=True), fg.tensor(U, requires_grad=True)
        xs = fg.tensor(x, requires_grad=True)
        h_T = fg.scan(lambda h, xt: (h @ w.T + xt @ u.T).tanh(), fg.zeros(1, 8), xs, checkpoint=ck)
        (h_T * h_T).sum().backward()
        grads.append((w.grad, u.grad, xs.grad, h_T.numpy()))
    for other in grads[1:]:
        for g0, g1 in zip(grads[0], other):
            np.testing.assert_array_equal(g0, g1)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_a_fused_cell_gives_bit_identical_gradients_in_every_checkpoint_mode(activation):
    """The LINEAR_ACT row fg.nn.RNN records per step: its VJP reads the step's input, weight
    and output, which every checkpoint mode must restore; and it equals the unfused cell."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 2, 6))
    W, b = rng.normal(size=(6, 6)) * 0.5, rng.normal(size=6)
    act = getattr(fg.nn.functional, activation)
    runs = []
    for fused, ck in [(True, None), (True, "sqrt"), (True, 7), (True, fg.Binomial(slots=5)),
                      (False, None)]:
        w, bt = fg.tensor(W, requires_grad=True), fg.tensor(b, requires_grad=True)
        xs = fg.tensor(x, requires_grad=True)

        def cell(h, xt):
            if fused:
                return fg.nn.functional.linear_act(h, w, xt + bt, activation)
            return act(h @ w.T + (xt + bt))

        h_T = fg.scan(cell, fg.zeros(2, 6), xs, checkpoint=ck)
        (h_T * h_T).sum().backward()
        runs.append((h_T.numpy(), w.grad, bt.grad, xs.grad))
    assert np.abs(runs[0][1]).sum() > 0
    for other in runs[1:4]:
        for a, b_ in zip(runs[0], other):
            np.testing.assert_array_equal(a, b_)
    for a, b_ in zip(runs[0], runs[4]):
        np.testing.assert_allclose(a, b_, rtol=1e-12, atol=1e-12)


def takes_the_single_cell_path(tape):
    """Whether the tape's scan runs on the single-cell path (kernels/scan.py, _cell_row)."""
    from fastgrad.kernels.scan import _cell_row, _x_offset  # kernels only kernels call

    arrays = tape.arrays()
    (r,) = [r for r, name, _, _ in tape.rows() if name == "scan"]
    ip = arrays[5][arrays[4][r] : arrays[4][r + 1]]
    return _cell_row.py_func(arrays, ip, _x_offset.py_func(arrays, ip)) >= 0


@pytest.mark.parametrize("activation", sorted(LINEAR_ACTIVATIONS))  # every one the registry has
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stack", [False, True])
@pytest.mark.parametrize("wants", ["all", "weights only"])
def test_a_one_row_cell_body_matches_the_general_loop_bit_for_bit(activation, dtype, stack,
                                                                    wants):
    """A body that is one linear_act(h, W, x_t) row (fg.nn.RNN's step once its input projection
    is hoisted out of the loop) runs without the general loop's per-step copies, in the store
    and segment modes. It must give the general loop's values and gradients bit for bit. The
    general loop runs when the body has a second row: a multiplication by one, exact both ways."""
    rng = np.random.default_rng(9)
    x, h0 = rng.normal(size=(200, 3, 5)), rng.normal(size=(3, 5)) * 0.1
    W, g_hs = rng.normal(size=(5, 5)) * 0.6, rng.normal(size=(200, 3, 5))
    x, h0, W, g_hs = (a.astype(dtype) for a in (x, h0, W, g_hs))
    runs = []
    for one_row, ck in [(True, None), (True, "sqrt"), (True, 7), (True, fg.Binomial(slots=4)),
                        (False, None), (False, 7)]:
        w = fg.tensor(W, requires_grad=True)
        xs = fg.tensor(x, requires_grad=wants == "all")
        init = fg.tensor(h0, requires_grad=wants == "all")

        def cell(h, xt):
            y = fg.nn.functional.linear_act(h, w, xt, activation)
            return y if one_row else y * 1.0

        out = fg.scan(cell, init, xs, checkpoint=ck, stack=stack)
        hs, h_T = out if stack else (None, out)
        loss = (h_T * h_T).sum() + ((hs * fg.tensor(g_hs)).sum() if stack else 0.0)
        assert takes_the_single_cell_path(h_T.tape) == (one_row and ck != fg.Binomial(slots=4))
        loss.backward()
        got = [h_T.numpy(), w.grad] + ([hs.numpy()] if stack else [])
        runs.append(got + ([xs.grad, init.grad] if wants == "all" else []))
    assert np.abs(runs[0][1]).sum() > 0
    for other in runs[1:]:
        assert len(other) == len(runs[0])
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


def test_a_compiled_rnn_step_on_the_single_cell_path_matches_the_general_loop():
    """fg.nn.RNN under fg.compile (parameters in the flat buffer, gradient modes of a compiled
    step): its loop takes the single-cell path and matches the same cell run by the general loop
    bit for bit. (Checkpointed, fg.nn.RNN projects x_t inside the loop: a body of two rows.)"""
    rng = np.random.default_rng(10)
    xs, y = rng.normal(size=(120, 4, 3)), rng.normal(size=(4, 1))
    results = []
    for one_row, ck in [(True, None), (False, None)]:
        rnn = fg.nn.RNN(3, 6, seed=1, stack_outputs=False, checkpoint=ck)
        head = fg.nn.Linear(6, 1, seed=2)
        if not one_row:
            w_ih, w_hh, b_ih, b_hh = rnn.parameters()

            def forward(x, w_ih=w_ih, w_hh=w_hh, b=None):
                u = x @ w_ih.T + (b_ih + b_hh)
                return fg.scan(lambda h, ut: fg.nn.functional.linear_act(h, w_hh, ut, "tanh") * 1.0,
                               fg.zeros(4, 6), u, checkpoint=ck)
        else:
            def forward(x):
                return rnn(x)[1]

        params = rnn.parameters() + head.parameters()
        step = fg.compile(lambda x, t: fg.mse_loss(head(forward(x)), t), params=params)
        loss, grads = step(xs, y)
        if one_row:
            assert takes_the_single_cell_path(step._last.tape)
        results.append((loss, grads))
    for loss, grads in results[1:]:
        assert loss == results[0][0]
        for a, b in zip(results[0][1], grads):
            np.testing.assert_array_equal(a, b)


def test_tape_length_does_not_depend_on_T():
    lengths = []
    for T in (10, 100_000):
        rnn = fg.nn.RNN(2, 4, seed=0, checkpoint="sqrt")
        _, h_T = rnn(np.zeros((T, 1, 2)))
        lengths.append((h_T.tape.n_rows, h_T.tape.n_nodes))
    assert lengths[0] == lengths[1]


def test_a_loop_over_rows_not_yet_computed_records_without_computing_them():
    """fg.scan computes nothing while it records (the rows before the loop run with the loop,
    in one sweep, so their kernels compile in one go); a value read inside the step still
    sees the initial carry and xs[0]."""
    w = fg.tensor([1.0, 2.0], requires_grad=True)
    h0, xs = w * 3.0, fg.tensor(np.arange(8.0).reshape(4, 2)) * 2.0
    seen = []

    def step(h, x):
        if not seen:
            seen.append((h.numpy().tolist(), x.numpy().tolist()))
        return h * 0.5 + x

    quiet = fg.scan(lambda h, x: h * 0.5 + x, h0, xs)
    assert quiet.tape.n_done == 0  # nothing ran: not the rows before the loop either
    h_T = fg.scan(step, h0, xs)
    assert seen == [([3.0, 6.0], [0.0, 2.0])]  # read inside the step: init and xs[0]
    expected = np.array([3.0, 6.0])
    for x in np.arange(8.0).reshape(4, 2) * 2.0:
        expected = expected * 0.5 + x
    assert h_T.numpy().tolist() == quiet.numpy().tolist() == expected.tolist()
    (h_T.sum() + quiet.sum()).backward()
    assert w.grad.tolist() == [2 * 3 * 0.5**4] * 2


def test_scan_supports_tuple_carries_and_no_xs():
    a = fg.tensor(2.0, requires_grad=True)
    x, y = fg.scan(lambda c, _: (c[0] * a, c[1] + c[0]), (fg.tensor(1.0), fg.tensor(0.0)),
                   length=4)
    assert x.item() == 16.0 and y.item() == 1 + 2 + 4 + 8
    (x + y).backward()
    # d/da [a^4 + 1 + a + a^2 + a^3] at a=2
    assert float(a.grad) == pytest.approx(4 * 8 + 1 + 4 + 12)


def test_memory_guard_refuses_before_allocating_and_suggests_checkpointing():
    rnn = fg.nn.RNN(2, 16, seed=0, stack_outputs=False)
    fg.set_memory_limit(32 << 20)  # room for the input projection (13 MB), not 128 MB of steps
    try:
        with pytest.raises(fg.FastgradError, match="scan: needs .* GiB.*checkpoint='sqrt'"):
            rnn(np.zeros((100_000, 1, 2)))
        rnn.checkpoint = "sqrt"
        hs, h = rnn(np.zeros((100_000, 1, 2)))
        assert hs is None and h.shape == (1, 16)
    finally:
        fg.set_memory_limit(None)


def test_scan_inside_compile_and_fit_trains_a_many_to_one_rnn():
    rng = np.random.default_rng(9)
    T, N = 12, 64
    X = rng.normal(size=(N, T, 1))
    Y = X.sum(axis=1)  # the sum of the sequence: needs memory across steps
    rnn = fg.nn.RNN(1, 8, seed=1, batch_first=True)
    head = fg.nn.Linear(8, 1, seed=2)
    params = rnn.parameters() + head.parameters()
    opt = fg.optim.Adam(params, lr=1e-2)

    def loss(xb, yb):
        _, h = rnn(xb)
        return fg.mse_loss(head(h), yb)

    step = fg.compile(loss, optimizer=opt, clip_grad_norm=1.0)
    eager = loss(X[:16], Y[:16]).item()
    assert step(X[:16], Y[:16]) == pytest.approx(eager, rel=1e-12)
    hist = fg.fit(step, X, Y, epochs=60, batch_size=16, seed=0, progress=False)
    assert hist.loss[-1] < 0.2 * hist.loss[0]


def test_reshaping_an_outside_tensor_inside_the_body_keeps_its_gradient():
    w0, xs = np.array([0.5, -0.3, 0.8]), np.arange(12.0).reshape(4, 3) / 10
    grads = []
    for reshape in (False, True):
        w = fg.tensor(w0, requires_grad=True)
        h_T = fg.scan((lambda h, x: h * w.reshape(3) + x) if reshape else (lambda h, x: h * w + x),
                      fg.tensor(np.ones(3)), fg.tensor(xs))
        h_T.sum().backward()
        grads.append(w.grad)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-14)
    assert fg.gradcheck(lambda v: fg.scan(lambda h, x: (h @ v).tanh() + x, fg.tensor(np.ones(2)),
                                          fg.tensor(xs[:, :2])), [np.array([0.3, -0.2])]) <= 1


def test_a_parameter_as_xs_under_compile_matches_eager():
    P0 = np.arange(6.0).reshape(3, 2) / 10 + 1
    c = np.array([0.5, 0.5])
    P = fg.nn.Parameter(P0.copy())
    loss, (g,) = fg.compile(lambda cc: fg.scan(lambda h, xt: h * cc + xt, cc * 2.0, P).sum())(c)
    Q = fg.nn.Parameter(P0.copy())
    eager = fg.scan(lambda h, xt: h * fg.tensor(c) + xt, fg.tensor(c) * 2.0, Q).sum()
    eager.backward()
    assert loss == pytest.approx(eager.item(), rel=1e-14)
    np.testing.assert_allclose(g, Q.grad, rtol=1e-14)


# ----------------------------------------------------------------------------- binomial checkpoints
def griewank_extra_steps(T, s):
    """Griewank (1992): with r the least integer with C(s + r, s) >= T, reversing T steps with
    s checkpoints reruns at least r T - C(s + r, s + 1) forward steps besides the T of the
    forward sweep."""
    r = 0
    while math.comb(s + r, s) < T:
        r += 1
    return r * T - math.comb(s + r, s + 1) if r else 0


@functools.cache
def fewest_extra_steps(T, s):
    """Brute force over every split: advance m steps, keep a checkpoint there, reverse the
    T - m steps after it with s - 1 slots, then the m steps before it with s."""
    if T <= 1:
        return 0
    if s == 1:
        return T * (T - 1) // 2
    return min(m + fewest_extra_steps(T - m, s - 1) + fewest_extra_steps(m, s)
               for m in range(1, T))


def scan_buffers(tape):
    """The values a tape's scan keeps for its backward sweep, by node label."""
    return {label: tape.node_values(v) for v, label in tape.labels.items()
            if label.startswith("scan ")}


def elman_scan(T, checkpoint, seed=0, H=8):
    rng = np.random.default_rng(seed)
    w = fg.tensor(rng.normal(size=(H, H)) * 0.4, requires_grad=True)
    u = fg.tensor(rng.normal(size=(H, 4)) * 0.4, requires_grad=True)
    xs = fg.tensor(rng.normal(size=(T, 1, 4)), requires_grad=True)
    h_T = fg.scan(lambda h, xt: (h @ w.T + xt @ u.T).tanh(), fg.zeros(1, H), xs,
                  checkpoint=checkpoint)
    return h_T, (w, u, xs)


def test_binomial_checkpointing_gives_bit_identical_gradients_on_1000_steps():
    results = []
    for ck in (None, fg.Binomial(slots=2), fg.Binomial(slots=3), fg.Binomial(slots=32),
               fg.Binomial(slots=5000)):
        h_T, leaves = elman_scan(1000, ck)
        (h_T * h_T).sum().backward()
        results.append([h_T.numpy()] + [t.grad for t in leaves])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_binomial_checkpointing_of_tuple_carries_with_stacked_outputs_is_bit_identical():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(200, 2, 3))
    g = rng.normal(size=(200, 2, 5))
    results = []
    for ck in ("sqrt", fg.Binomial(slots=4)):  # both project the input inside the loop
        lstm = fg.nn.LSTM(3, 5, seed=12, checkpoint=ck)
        xt = fg.tensor(x, requires_grad=True)
        hs, (_, c) = lstm(xt)
        ((hs * g).sum() + (c * c).sum()).backward()
        results.append([hs.numpy(), c.numpy(), xt.grad] + [p.grad for p in lstm.parameters()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("T,s", [(2, 1), (50, 1), (50, 2), (50, 3), (120, 4), (1000, 3),
                                 (1000, 32), (1000, 999), (1000, 5000)])
def test_binomial_backward_sweep_runs_griewanks_optimal_number_of_forward_steps(T, s):
    h_T, _ = elman_scan(T, fg.Binomial(slots=s))
    (h_T * h_T).sum().backward()
    counters = scan_buffers(h_T.tape)["scan schedule"]
    ran, most_slots = counters[2], counters[3]
    assert ran == griewank_extra_steps(T, s) == fg.Binomial(slots=s).extra_steps(T)
    if T <= 120:
        assert ran == fewest_extra_steps(T, min(s, T - 1))
    assert most_slots == min(s, T - 1)
    actions = fg.Binomial(slots=s).schedule(T)  # the same schedule, spelled out in Python
    assert sum(b - a for kind, a, b in (x for x in actions if x[0] == "advance")) == ran
    runs = np.zeros(T, int)
    for kind, *args in actions:
        if kind in ("forward", "advance"):
            runs[args[0] : args[1]] += 1
    assert runs.max() <= fg.Binomial(slots=s).repetitions(T) + 1


def test_binomial_keeps_at_most_s_carries_whatever_T():
    H = 16
    for T in (10, 100_000):
        rnn = fg.nn.RNN(2, H, seed=0, checkpoint=fg.Binomial(slots=8), stack_outputs=False)
        _, h_T = rnn(np.zeros((T, 1, 2)))
        buffers = scan_buffers(h_T.tape)
        assert buffers["scan store"].size == 0
        assert buffers["scan checkpoints"].size == 8 * H  # 8 carries of (1, 16)
        assert buffers["scan schedule"].size == 4 + 8  # counters and the step each slot holds
    sqrt = fg.nn.RNN(2, H, seed=0, checkpoint="sqrt", stack_outputs=False)
    _, h_T = sqrt(np.zeros((100_000, 1, 2)))
    assert scan_buffers(h_T.tape)["scan checkpoints"].size == 316 * H  # ceil(T / 317) carries


def test_memory_guard_covers_the_binomial_checkpoints():
    rnn = fg.nn.RNN(2, 16, seed=0, stack_outputs=False, checkpoint=fg.Binomial(slots=100_000))
    fg.set_memory_limit(4 << 20)
    try:
        with pytest.raises(fg.FastgradError, match=r"scan: needs .* GiB.*Binomial\(slots=s\)"):
            rnn(np.zeros((100_000, 1, 2)))  # 99,999 carries x 16 values x 8 bytes x 2 > 4 MiB
        rnn.checkpoint = fg.Binomial(slots=32)
        _, h = rnn(np.zeros((100_000, 1, 2)))
        assert h.shape == (1, 16)
    finally:
        fg.set_memory_limit(None)


def test_a_second_backward_through_a_binomial_scan_redoes_the_forward_sweep():
    h_T, (w, _, _) = elman_scan(300, fg.Binomial(slots=5))
    loss = (h_T * h_T).sum()
    loss.backward()
    first = w.grad.copy()
    w.grad = None
    loss.backward()  # the scan's backward sweep again, without a forward sweep in between
    np.testing.assert_array_equal(w.grad, first)
    ran = scan_buffers(h_T.tape)["scan schedule"][2]
    assert ran == 300 + fg.Binomial(slots=5).extra_steps(300)  # its slots were reused


def test_binomial_schedule_matches_checkpoint_schedules_revolve():
    cs = pytest.importorskip("checkpoint_schedules")
    for s in range(1, 5):
        for T in range(s + 1, 40):
            theirs = cs.MultistageCheckpointSchedule(T, s, 0, trajectory="revolve")
            stores, extra = [], 0
            for action in theirs:
                if isinstance(action, cs.Forward):
                    extra += 0 if action.write_adj_deps else action.n1 - action.n0
                    stores += [action.n0] if action.write_ics else []
                if isinstance(action, cs.EndReverse):
                    break
            ours = fg.Binomial(slots=s).schedule(T)
            assert [a[2] for a in ours if a[0] == "store"] == stores
            assert fg.Binomial(slots=s).extra_steps(T) == extra == \
                cs.optimal_steps_binomial(T, s) - T


@pytest.mark.parametrize("slots", [0, -3, 2.5, True, "32"])
def test_binomial_refuses_slots_that_are_not_a_positive_integer(slots):
    with pytest.raises(fg.FastgradError, match=r"Binomial: slots must be an integer >= 1.*Fix"):
        fg.Binomial(slots)


# ----------------------------------------------------------------------------- truncated BPTT
def readout_loss(head):
    return lambda hs, ys: fg.mse_loss(head(hs), ys)


def test_truncated_bptt_covering_the_whole_sequence_is_one_step_of_full_bptt():
    rng = np.random.default_rng(20)
    T, B = 30, 2
    xs, ys = rng.normal(size=(T, B, 3)), rng.normal(size=(T, B, 1))
    h0 = rng.normal(size=(B, 6)) * 0.1
    models = []
    for _ in range(2):
        rnn, head = fg.nn.RNN(3, 6, seed=21), fg.nn.Linear(6, 1, seed=22)
        models.append((rnn, head, fg.optim.Adam(rnn.parameters() + head.parameters(), lr=0.1)))
    (rnn, head, opt), (ref_rnn, ref_head, ref_opt) = models
    losses, h_T = fg.truncated_bptt(rnn, h0, xs, ys, k1=T, k2=T, loss=readout_loss(head),
                                    optimizer=opt)
    hs, ref_h_T = ref_rnn(xs, fg.tensor(h0))  # full BPTT: one loss over all T steps
    ref_loss = readout_loss(ref_head)(hs, ys)
    ref_loss.backward()
    ref_opt.step()
    assert losses.tolist() == [ref_loss.item()]
    np.testing.assert_array_equal(h_T.numpy(), ref_h_T.numpy())
    for p, q in zip(rnn.parameters() + head.parameters(),
                    ref_rnn.parameters() + ref_head.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def tbptt_by_hand(model, head, opt, init, xs, ys, k1, k2):
    """TBPTT(k1, k2) one step at a time, eagerly: the update ending at step e runs steps
    max(0, e - k2) .. e-1 from the carry last computed for that step, and backpropagates the
    loss of the steps since the previous update."""
    carry_at = {0: init}
    losses, done = [], 0
    while done < len(xs):
        end = min(done + k1, len(xs))
        h = carry_at[max(0, end - k2)]
        outputs = []
        for t in range(max(0, end - k2), end):
            out, h = model(xs[t : t + 1], h)
            outputs.append(out)
            carry_at[t + 1] = tuple(fg.tensor(c.numpy()) for c in h)  # detached
        loss = readout_loss(head)(fg.concatenate(outputs[len(outputs) - (end - done) :]),
                                  ys[done:end])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        done = end
    return np.array(losses), carry_at[len(xs)]


def test_truncated_bptt_with_overlapping_windows_matches_the_windows_done_by_hand():
    rng = np.random.default_rng(23)
    T, B, k1, k2 = 23, 2, 3, 7  # windows overlap by 4 steps; the last update has 2 steps
    xs, ys = rng.normal(size=(T, B, 2)), rng.normal(size=(T, B, 1))
    init = (np.zeros((B, 4)), rng.normal(size=(B, 4)) * 0.1)  # an LSTM's (h0, c0)
    runs = []
    for _ in range(2):
        lstm, head = fg.nn.LSTM(2, 4, seed=24), fg.nn.Linear(4, 1, seed=25)
        runs.append((lstm, head, fg.optim.SGD(lstm.parameters() + head.parameters(), lr=0.2,
                                              momentum=0.9)))
    (lstm, head, opt), (ref_lstm, ref_head, ref_opt) = runs
    losses, (h, c) = fg.truncated_bptt(lstm, init, xs, ys, k1, k2, readout_loss(head), opt)
    ref_losses, (ref_h, ref_c) = tbptt_by_hand(ref_lstm, ref_head, ref_opt,
                                               tuple(fg.tensor(a) for a in init), xs, ys, k1, k2)
    assert losses.shape == (8,)  # ceil(23 / 3) updates
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    np.testing.assert_allclose(h.numpy(), ref_h.numpy(), rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(c.numpy(), ref_c.numpy(), rtol=1e-11, atol=1e-14)
    for p, q in zip(lstm.parameters() + head.parameters(),
                    ref_lstm.parameters() + ref_head.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-11, atol=1e-14)
    untrained = fg.nn.LSTM(2, 4, seed=24).weight_hh_l0.numpy()
    assert not np.allclose(lstm.weight_hh_l0.numpy(), untrained)  # the updates did something


def test_truncated_bptt_takes_a_step_function_through_scan():
    w = fg.nn.Parameter(np.array([0.5]))
    xs = np.ones((5, 1))

    def model(x, h):
        return fg.scan(lambda c, xt: c * w + xt, h, x, stack=True)

    opt = fg.optim.SGD([w], lr=0.0)  # lr 0: the losses show the carry flowing across windows
    losses, h = fg.truncated_bptt(model, np.zeros(1), xs, xs * 0, k1=2, k2=2,
                                  loss=lambda hs, ys: (hs - ys).sum(), optimizer=opt)
    hs = [1.0, 1.5, 1.75, 1.875, 1.9375]  # h_t = 0.5 h_{t-1} + 1
    assert losses.tolist() == [hs[0] + hs[1], hs[2] + hs[3], hs[4]]
    assert h.tolist() == [hs[4]]


@pytest.mark.parametrize("k1,k2,fix", [
    (4, 2, r"k2=2 < k1=4.*Fix: pass k2 >= k1"),
    (0, 3, r"k1 must be an integer >= 1, got 0.*Fix"),
    (2.5, 3, r"k1 must be an integer >= 1, got 2.5.*Fix"),
    (2, None, r"k2 must be an integer >= 1, got None.*Fix"),
])
def test_truncated_bptt_refuses_bad_window_lengths(k1, k2, fix):
    rnn = fg.nn.RNN(1, 2, seed=0)
    opt = fg.optim.SGD(rnn.parameters(), lr=0.1)
    with pytest.raises(fg.FastgradError, match="truncated_bptt: " + fix):
        fg.truncated_bptt(rnn, np.zeros((1, 2)), np.zeros((8, 1, 1)), np.zeros((8, 1, 2)), k1, k2,
                          fg.mse_loss, opt)


def test_truncated_bptt_refuses_mismatched_streams_and_models():
    rnn = fg.nn.RNN(1, 2, seed=0)
    opt = fg.optim.SGD(rnn.parameters(), lr=0.1)
    xs, h0 = np.zeros((8, 1, 1)), np.zeros((1, 2))
    cases = [
        ({"targets": np.zeros((7, 1, 2))}, r"8 inputs but targets of shape \(7, 1, 2\).*Fix"),
        ({"optimizer": None}, r"needs an fg.optim optimizer.*Fix"),
        ({"model": fg.nn.RNN(1, 2, batch_first=True)},
         r"take \(T, B, ...\).*Fix: build it with batch_first=False"),
        ({"model": lambda x, h: h}, r"must return \(outputs \(n, ...\), carry\).*Fix"),
    ]
    for change, message in cases:
        args = {"model": rnn, "init": h0, "xs": xs, "targets": np.zeros((8, 1, 2)), "k1": 2,
                "k2": 4, "loss": fg.mse_loss, "optimizer": opt, **change}
        with pytest.raises(fg.FastgradError, match="truncated_bptt: .*" + message):
            fg.truncated_bptt(**args)


@pytest.mark.parametrize("cls", [fg.nn.RNN, fg.nn.LSTM, fg.nn.GRU])
def test_recurrent_layers_under_no_grad_give_the_recorded_values(cls):
    # evaluation under no_grad must still run the loop, not return the initial state
    layer = cls(input_size=3, hidden_size=4, seed=0, dtype=np.float64)
    xs = np.random.default_rng(0).normal(size=(6, 2, 3))
    hs, _ = layer(xs)
    with fg.no_grad():
        hs_eval, _ = layer(xs)
    assert not hs_eval.requires_grad
    np.testing.assert_array_equal(hs_eval.numpy(), hs.numpy())


def test_scan_under_no_grad_matches_a_numpy_loop():
    W = np.array([[0.5, -0.2], [0.1, 0.9]])
    x = np.random.default_rng(1).normal(size=(4, 2))
    w = fg.tensor(W, requires_grad=True)
    with fg.no_grad():
        h = fg.scan(lambda h, x_t: (h @ w + x_t).tanh(), fg.tensor(np.ones(2)), fg.tensor(x))
    ref = np.ones(2)
    for t in range(4):
        ref = np.tanh(ref @ W + x[t])
    assert not h.requires_grad
    np.testing.assert_allclose(h.numpy(), ref, rtol=1e-14)


def test_a_no_grad_warm_up_does_not_take_gradients_from_later_uses_of_the_weights():
    # the warm-up records W_hh on the scan's tape as a constant; the later forward, with grad
    # on, must import it again as a leaf that receives a gradient
    rng = np.random.default_rng(3)
    warm, xs = rng.normal(size=(4, 2, 3)), rng.normal(size=(5, 2, 3))

    def grads(warm_under_no_grad):
        rnn = fg.nn.RNN(3, 4, seed=1, dtype=np.float64)
        if warm_under_no_grad:
            with fg.no_grad():
                _, h = rnn(warm, fg.tensor(np.zeros((2, 4))))
        else:
            _, h = rnn(warm, fg.tensor(np.zeros((2, 4))))
            h = fg.tensor(h.numpy())  # the same carry, detached by copying
        hs, _ = rnn(xs, h)
        (hs * hs).sum().backward()
        return [p.grad for p in rnn.parameters()]

    for got, want in zip(grads(True), grads(False)):
        assert got is not None
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("checkpoint", [None, 2, fg.Binomial(slots=2)])
def test_compiled_scan_over_a_reshaped_parameter_matches_eager(checkpoint):
    # xs aliases a parameter's slot, which fg.compile moves into its flat parameter buffer
    rng = np.random.default_rng(1)
    T, B, H = 4, 2, 3
    Wn, Pn, h0 = rng.normal(size=(H, H)) * 0.5, rng.normal(size=T * B * H), rng.normal(size=(B, H))

    def loss_of(W, P):
        h = fg.scan(lambda h, x: ((h @ W) * x).tanh() + x, fg.tensor(h0), P.reshape(T, B, H),
                    checkpoint=checkpoint)
        return (h * h).sum()

    W, P = fg.tensor(Wn, requires_grad=True), fg.tensor(Pn, requires_grad=True)
    eager = loss_of(W, P)
    eager.backward()
    W2, P2 = fg.tensor(Wn, requires_grad=True), fg.tensor(Pn, requires_grad=True)
    loss, (gW, gP) = fg.compile(lambda: loss_of(W2, P2), params=[W2, P2])()
    assert loss == pytest.approx(eager.item(), rel=1e-13)
    np.testing.assert_allclose(gW, W.grad, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gP, P.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("role", ["xs", "reshaped xs", "init"])
def test_the_compiled_functions_input_as_a_scans_sequence_or_carry_matches_eager(role):
    # fg.compile reads its first input in place from the caller's array, except when a scan
    # takes it (or a reshape of it) as its sequence or initial carry: those stay copied in
    rng = np.random.default_rng(13)
    W0 = rng.normal(size=(3, 3)) * 0.5
    data = rng.normal(size=(5, 3)) if role != "init" else rng.normal(size=(3,))
    seq = rng.normal(size=(5, 3))

    def loss_of(x, W):
        if role == "init":
            h = fg.scan(lambda h, xt: fg.tanh(h @ W + xt), x, fg.tensor(seq))
        else:
            xs = x.reshape(5, 1, 3) if role == "reshaped xs" else x
            h = fg.scan(lambda h, xt: fg.tanh(h @ W + xt), fg.zeros(xs.shape[1:]), xs)
        return (h * h).sum()

    W = fg.nn.Parameter(W0.copy())
    f = fg.compile(lambda x: loss_of(x, W))
    for k in range(2):  # a second call with other values: nothing stale from the first
        x = data + k
        loss, (g,) = f(x)
        V = fg.nn.Parameter(W0.copy())
        eager = loss_of(fg.tensor(x), V)
        eager.backward()
        assert loss == pytest.approx(eager.item(), rel=1e-13)
        np.testing.assert_allclose(g, V.grad, rtol=1e-12)


def _transposed_cell_loop(w0, xs, compiled=False):
    """((h @ w.T) + x).tanh() over xs; returns (h_T, w's gradient, the ops before the loop's
    SCAN_BEGIN row, the ops of its body). The eager loop is not fused (transforms/fusion.py),
    so that its body keeps the rows as recorded; the compiled one is."""
    w = fg.tensor(w0, requires_grad=True)

    def loss(x):
        h = fg.scan(lambda h, x_t: ((h @ w.T) + x_t).tanh(), fg.tensor(np.zeros((2, 4))), x,
                    fuse=compiled)
        return (h * h).sum(), h

    if compiled:
        (value, grads) = fg.compile(lambda x: loss(x)[0], params=[w])(xs)
        return value, grads[0], None, None
    value, h = loss(fg.tensor(xs))
    tape = value.tape
    ops = [fg.ops.Op(c).name for c in tape.ops.view]
    begin, end = ops.index("SCAN_BEGIN"), tape.scan_rows[-1]
    value.backward()
    return value.item(), w.grad, ops[:begin], ops[begin + 1 : end]


def test_a_row_that_reads_only_outside_tensors_runs_once_before_the_loop(monkeypatch):
    """A step's loop-invariant rows (here the weight's transpose) are recorded before the
    loop, not in its body: computed once, their VJP run once on the gradient summed over the
    steps. Values and gradients are those of the same loop with the row inside the body."""
    rng = np.random.default_rng(1)
    w0, xs = rng.standard_normal((4, 4)) * 0.4, rng.standard_normal((30, 2, 4)) * 0.3
    value, grad, before, body = _transposed_cell_loop(w0, xs)
    assert before[-1:] == ["STRIDED"] and body == ["MATMUL", "ADD", "TANH"]
    monkeypatch.setattr(fg.tape.Tape, "hoist_last_row", lambda self: None)
    value_in, grad_in, before_in, body_in = _transposed_cell_loop(w0, xs)
    assert "STRIDED" not in before_in and body_in == ["STRIDED", "MATMUL", "ADD", "TANH"]
    assert value == value_in
    np.testing.assert_allclose(grad, grad_in, rtol=1e-13, atol=1e-15)
    monkeypatch.undo()
    compiled_value, compiled_grad, _, _ = _transposed_cell_loop(w0, xs, compiled=True)
    np.testing.assert_allclose(compiled_value, value, rtol=1e-13)
    np.testing.assert_allclose(compiled_grad, grad, rtol=1e-12, atol=1e-15)


def test_a_hoisted_row_of_a_parameter_is_recomputed_at_every_call_of_a_compiled_step():
    rng = np.random.default_rng(2)
    w0, xs = rng.standard_normal((4, 4)) * 0.4, rng.standard_normal((10, 2, 4)) * 0.3
    w = fg.tensor(w0.copy(), requires_grad=True)
    opt = fg.optim.SGD([w], lr=0.1)
    step = fg.compile(lambda x: (fg.scan(lambda h, x_t: ((h @ w.T) + x_t).tanh(),
                                         fg.tensor(np.zeros((2, 4))), x) ** 2).sum(),
                      optimizer=opt)
    w_eager = w0.copy()
    for _ in range(3):
        want, grad, _, _ = _transposed_cell_loop(w_eager, xs)  # the loss at the current weight
        np.testing.assert_allclose(step(xs), want, rtol=1e-12)
        w_eager = w_eager - 0.1 * grad
    np.testing.assert_allclose(w.numpy(), w_eager, rtol=1e-12)


def _two_carry_cell(w, u):
    def step(carry, x):
        h, s = carry
        h = (h @ w.T + x @ u.T).tanh()
        return h, s + (h * h).sum(axis=1, keepdims=True)
    return step


@pytest.mark.parametrize("checkpoint", [None, "sqrt", 3, fg.Binomial(slots=2)], ids=str)
@pytest.mark.parametrize("cell", ["plain", "fused", "two carries"])
def test_the_numpy_reference_runs_scans_as_the_kernels_do(cell, checkpoint):
    """fastgrad.reference interprets a loop from its rows (the semantics: T passes over the
    body, carries passed on, x_t loaded; the VJPs backwards with the carries' gradients passed
    back): its values and gradients are the kernels', in every checkpoint mode, on the general
    path (plain rows), the single-cell path (one fused row) and with two carries, a stacked
    output and xs and the init wanting gradients."""
    from fastgrad.reference import Reference

    rng = np.random.default_rng(12)
    w = fg.tensor(rng.standard_normal((4, 4)) * 0.5, requires_grad=True)
    u = fg.tensor(rng.standard_normal((4, 3)) * 0.5, requires_grad=True)
    xs = fg.tensor(rng.standard_normal((9, 2, 3)), requires_grad=True)
    h0 = fg.tensor(rng.standard_normal((2, 4)) * 0.3, requires_grad=True)
    if cell == "two carries":
        hs, (h, s) = fg.scan(_two_carry_cell(w, u), (h0, fg.zeros((2, 1))), xs,
                             checkpoint=checkpoint, stack=True)
        loss = (hs * hs).sum() + s.sum() + h.sum()
    else:
        proj = xs @ u.T  # (9, 2, 4): the fused cell's addend is x_t itself
        hs, h = fg.scan(lambda h, x: (h @ w.T + x).tanh(), h0, proj, checkpoint=checkpoint,
                        stack=True, fuse=cell == "fused")
        loss = (hs * hs).sum() + (h * h).sum()
    tape = loss.tape
    b0, b1 = tape.scan_body(tape.scan_rows[0])
    body = [fg.ops.Op(int(o)).name for o in tape.ops.view[b0:b1]]
    assert (body == ["LINEAR_ACT"]) == (cell == "fused")
    loss.backward()
    ref = Reference(tape)
    ref.forward()
    np.testing.assert_allclose(ref.node(loss.node), loss.numpy(), rtol=1e-12)
    grads = ref.backward(loss.node, np.ones(()))
    for leaf in (w, u, xs, h0):
        (node,) = {v for t, v in tape.tensors.leaves if t is leaf}
        np.testing.assert_allclose(ref.node(node, grads), leaf.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("checkpoint", [None, 3, fg.Binomial(slots=2)], ids=str)
def test_two_loops_recorded_apart_combine_into_one_graph(checkpoint, tmp_path):
    """Two fg.scan loops recorded on separate graphs (a bidirectional layer's two directions)
    and then combined: the second graph, loop included, moves into the first (its SCAN rows
    name nodes and rows that move with it), and the values and gradients are those of the
    loops run apart, in every checkpoint mode; the merged tape saves and loads (the file
    validator accepts the moved loop) and the NumPy reference runs it alike."""
    from fastgrad.reference import Reference

    rng = np.random.default_rng(13)
    w1, w2 = (fg.tensor(rng.standard_normal((3, 3)) * 0.5, requires_grad=True) for _ in "ab")
    xs = rng.standard_normal((7, 2, 3))

    def run(w, seq):
        return fg.scan(lambda h, x: (h @ w.T + x).tanh() * 1.0, fg.zeros(2, 3), seq,
                       checkpoint=checkpoint, stack=True)

    apart = []
    for w, seq in ((w1, xs), (w2, xs[::-1].copy())):
        hs, h = run(w, seq)
        ((hs * hs).sum() + h.sum()).backward()
        apart.append((hs.numpy().copy(), w.grad.copy()))
        w.grad = None
    (hs1, h1), (hs2, h2) = run(w1, xs), run(w2, xs[::-1].copy())
    assert hs1.tape is not hs2.tape and len(hs1.tape.scan_rows) == 1
    loss = (hs1 * hs1).sum() + h1.sum() + (hs2 * hs2).sum() + h2.sum()
    assert len(loss.tape.scan_rows) == 2
    loss.backward()
    np.testing.assert_array_equal(hs1.numpy(), apart[0][0])
    np.testing.assert_array_equal(hs2.numpy(), apart[1][0])
    np.testing.assert_allclose(w1.grad, apart[0][1], rtol=1e-13)
    np.testing.assert_allclose(w2.grad, apart[1][1], rtol=1e-13)
    fg.save(loss.tape, tmp_path / "two-loops.npz")
    loaded = fg.load(tmp_path / "two-loops.npz")
    assert loaded.scan_rows == loss.tape.scan_rows
    ref = Reference(loss.tape)
    ref.forward()
    np.testing.assert_allclose(ref.node(loss.node), loss.numpy(), rtol=1e-12)
