"""fg.scan and the recurrent layers: a loop recorded once, run natively T times."""

import numpy as np
import pytest

import fastgrad as fg


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


def test_tape_length_does_not_depend_on_T():
    lengths = []
    for T in (10, 100_000):
        rnn = fg.nn.RNN(2, 4, seed=0, checkpoint="sqrt")
        _, h_T = rnn(np.zeros((T, 1, 2)))
        lengths.append((h_T.tape.n_rows, h_T.tape.n_nodes))
    assert lengths[0] == lengths[1]


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
    fg.set_memory_limit(4 << 20)
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
