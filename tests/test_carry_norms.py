"""fg.carry_gradient_log_norms: log ||dL/dh_t|| for every step of a loop, exact to rounding at
any magnitude, and the RNN gradient study that reports it."""

import math

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import study
from fastgrad.carry_norms import log_norm


def _linear_step(W, dtype=np.float64):
    Wt = fg.tensor(np.asarray(W, dtype))
    return lambda h, x: h @ Wt.T + x


def _exact_linear_logs(W, c, T):
    """log ||c W^k|| for k = T-1 .. 0 (entry t: k = T-1-t), W symmetric, in log space:
    ||c Q diag(lam^k) Q^T|| = ||(c Q) lam^k|| for the orthogonal eigenvectors Q."""
    lam, Q = np.linalg.eigh(W)
    a = np.log(np.abs(c @ Q))
    k = np.arange(T)[::-1, None]
    terms = 2 * (a[None, :] + k * np.log(np.abs(lam))[None, :])
    top = terms.max(axis=1, keepdims=True)
    return 0.5 * (top[:, 0] + np.log(np.exp(terms - top).sum(axis=1)))


def test_log_norm_needs_no_squares_that_overflow_or_underflow():
    assert log_norm(np.array([3e200, 4e200])) == pytest.approx(math.log(5e200), abs=1e-12)
    assert log_norm(np.array([3e-200, 4e-200])) == pytest.approx(math.log(5e-200), abs=1e-12)
    assert log_norm(np.zeros(3)) == -np.inf
    assert np.isnan(log_norm(np.array([1.0, np.inf])))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_norms_are_the_plain_backward_sweeps_where_it_can_hold_them(dtype, compiled):
    """A tanh RNN, 300 steps in segments of 64, each recorded eagerly or run as a compiled
    step: each log-norm is the log of the norm one plain backward sweep gives (a probe e_t
    added to the carry), to rounding."""
    rng = np.random.default_rng(0)
    H, T = 6, 300
    Wt = fg.tensor((rng.standard_normal((H, H)) * 0.4).astype(dtype))
    xs = (rng.standard_normal((T, 1, H)) * 0.5).astype(dtype)
    seed = rng.standard_normal((1, H))
    logs = fg.carry_gradient_log_norms(lambda h, x: (h @ Wt.T + x).tanh(),
                                       np.zeros((1, H), dtype), xs, seed, segment=64,
                                       compiled=compiled)
    probe = fg.tensor(np.stack([xs, np.zeros_like(xs)], axis=1), requires_grad=True)
    h = fg.scan(lambda h, x: (h @ Wt.T + x[0]).tanh() + x[1], fg.zeros((1, H), dtype=dtype),
                probe)
    h.backward(seed.astype(dtype))
    plain = np.linalg.norm(probe.grad[:, 1, 0].astype(np.float64), axis=1)
    assert logs.dtype == np.float64 and logs.shape == (T,)
    ok = plain > (0 if dtype == np.float64 else 1e-30)  # float32: not where it is subnormal
    assert ok[-50:].all()
    np.testing.assert_allclose(logs[ok], np.log(plain[ok]), atol=1e-12 if dtype == np.float64
                               else 2e-5)
    if dtype == np.float32:  # float32's norms underflow to 0 here; the log-norms do not
        assert not ok.all() and np.isfinite(logs).all()


def test_a_symmetric_linear_rnn_at_1e5_steps_against_the_exact_log_norms():
    """Radius 0.9 over 10^5 steps: the plain norms reach 1e-4575, far below float64; every
    log-norm matches the eigen-decomposition's exact value, and the slope against steps back
    is log(radius)."""
    rng = np.random.default_rng(1)
    T, radius = 100_000, 0.9
    W = study.recurrent_matrix(5, radius, "symmetric", seed=0)
    c = rng.standard_normal(5)
    logs = fg.carry_gradient_log_norms(_linear_step(W), np.zeros(5), np.zeros((T, 5)), c)
    exact = _exact_linear_logs(W, c, T)
    assert logs[0] < -10_000 and np.isfinite(logs).all()
    np.testing.assert_allclose(logs, exact, rtol=1e-9, atol=1e-9)
    assert study.log_growth_rate(logs) == pytest.approx(math.log(radius), abs=2e-3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_growing_gradients_are_exact_past_the_largest_float(dtype):
    """Radius 1.2 over 5,000 steps: 1.2^4999 is 1e396; the segments split where the gradient
    leaves the dtype's range (one segment of all T steps to start with) and the log-norms
    stay exact."""
    T = 5000
    W = study.recurrent_matrix(4, 1.2, "symmetric", seed=2)
    c = np.ones(4)
    logs = fg.carry_gradient_log_norms(_linear_step(W, dtype), np.zeros(4, dtype),
                                       np.zeros((T, 4), dtype), c, segment=T)
    np.testing.assert_allclose(logs, _exact_linear_logs(W, c, T), rtol=1e-5 if dtype ==
                               np.float32 else 1e-9)


def test_the_result_does_not_depend_on_the_checkpoint_mode_or_on_compiling():
    rng = np.random.default_rng(3)
    Wt = fg.tensor(rng.standard_normal((4, 4)) * 0.6)
    xs = rng.standard_normal((200, 1, 4))
    runs = [fg.carry_gradient_log_norms(lambda h, x: (h @ Wt.T + x).tanh(), np.zeros((1, 4)),
                                        xs, np.ones((1, 4)), segment=50, checkpoint=ck,
                                        compiled=compiled)
            for ck in (None, "sqrt", 7, fg.Binomial(slots=3)) for compiled in (False, True)]
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0], other)


def test_a_gradient_that_is_exactly_zero_is_minus_infinity_from_there_back():
    """A relu that is off at step 10 passes no gradient: log 0 = -inf for t < 10, exactly."""
    xs = np.zeros((30, 2))
    xs[10] = -100.0  # the pre-activation at step 10 is negative: relu's slope is 0
    Wt = fg.tensor(np.eye(2) * 0.5)
    logs = fg.carry_gradient_log_norms(lambda h, x: (h @ Wt.T + x + 1.0).relu(), np.zeros(2),
                                       xs, np.ones(2), segment=8)
    assert np.isneginf(logs[:10]).all() and np.isfinite(logs[10:]).all()


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(fg.FastgradError, match="seed has shape"):
        fg.carry_gradient_log_norms(lambda h, x: h + x, np.zeros(2), np.zeros((3, 2)),
                                    np.ones(3))
    with pytest.raises(fg.FastgradError, match="segment must be an int"):
        fg.carry_gradient_log_norms(lambda h, x: h + x, np.zeros(2), np.zeros((3, 2)),
                                    np.ones(2), segment=0)
    with pytest.raises(fg.FastgradError, match="compiled must be"):
        fg.carry_gradient_log_norms(lambda h, x: h + x, np.zeros(2), np.zeros((3, 2)),
                                    np.ones(2), compiled="yes")


def test_the_study_reports_log_norms_where_plain_norms_vanish():
    """Radius 0.9, linear, 20,000 steps: the plain norms underflow after about 6,700 steps
    back (they were 0 there and the growth rate was fitted on the rest, silently); now every
    log-norm is finite, the fit uses them all, and the row counts the unrepresentable norms."""
    r = study.rnn_gradient_norms(hidden=8, T=20_000, spectral_radius=0.9, nonlinearity="linear",
                                 weights="symmetric", lyapunov_steps=0)
    row = r.rows[0]
    logs, norms = r.log_norms[(0.9, 0)], r.norms[(0.9, 0)]
    assert np.isfinite(logs).all() and (norms == 0).sum() == row["unrepresentable"] > 10_000
    assert row["nonfinite"] == 0
    assert row["growth_rate"] == pytest.approx(math.log(0.9), abs=2e-3)
    assert row["vanished_at_t"] == int(np.flatnonzero(logs < -math.log(1e6))[-1])


def test_the_study_saves_log_norms_and_plots_them(tmp_path):
    pytest.importorskip("matplotlib")
    r = study.rnn_gradient_norms(hidden=4, T=3000, spectral_radius=[0.8, 1.2],
                                 nonlinearity="linear", weights="symmetric", lyapunov_steps=0)
    paths = r.save(tmp_path)
    names = {p.name for p in paths}
    assert {"rnn_gradient_norms_log_norms.npz", "rnn_gradient_norms_norms.npz"} <= names
    with np.load(tmp_path / "rnn_gradient_norms_log_norms.npz") as z:
        np.testing.assert_array_equal(z["radius=1.2_seed=0"], r.log_norms[(1.2, 0)])
    assert any(p.suffix == ".png" for p in paths)
