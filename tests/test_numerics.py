"""Numerical accuracy and stability of the kernels' math, pinned against NumPy."""

import numpy as np
import pytest
import scipy.special

import fastgrad as fg


def ulps(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    finite = np.isfinite(ref) & (ref != 0)
    assert np.array_equal(got[~finite], ref[~finite], equal_nan=True)
    return (np.abs(got[finite] - ref[finite]) / np.spacing(np.abs(ref[finite]))).max()


X64 = np.concatenate([np.linspace(-750, 750, 200_001), np.linspace(-3, 3, 100_001),
                      np.logspace(-300, 2, 2001), -np.logspace(-300, 2, 2001),
                      [np.inf, -np.inf, np.nan, 0.0]])


def test_float64_exp_tanh_sigmoid_within_two_ulp_of_numpy():
    with np.errstate(over="ignore"):
        assert ulps(fg.exp(X64).numpy(), np.exp(X64)) <= 2
    assert ulps(fg.tanh(X64).numpy(), np.tanh(X64)) <= 2
    e = np.exp(-np.abs(X64))
    ref = np.where(X64 >= 0, 1 / (1 + e), e / (1 + e))
    assert ulps(fg.sigmoid(X64).numpy(), ref) <= 2


def test_float32_tanh_and_exp_are_accurate():
    x = X64[np.abs(X64) < 80].astype(np.float32)
    assert np.abs(fg.tanh(x).numpy() - np.tanh(x.astype(np.float64))).max() <= 4e-7
    assert ulps(fg.exp(x).numpy().astype(np.float32),
                np.exp(x.astype(np.float64)).astype(np.float32)) <= 1


def test_float32_sigmoid_within_three_ulp_down_to_subnormals():
    """float32 sigmoid runs in float32 arithmetic (kernels/vecmath.py, sigmoid32), alone and
    fused into a layer, measured in float32 ulps against the float64 formula rounded once."""
    x = np.concatenate([X64[np.abs(X64) < 200], np.linspace(-110, 110, 400_001),
                        [np.inf, -np.inf, np.nan]]).astype(np.float32)
    xd = x.astype(np.float64)
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(xd))
    ref = np.where(xd >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32)
    assert ref[(x < -95) & (x > -103)].min() > 0  # the range covers float32 subnormals
    one = np.ones((1, 1), np.float32)
    fused = fg.nn.functional.linear_act(fg.tensor(x[:, None]), fg.tensor(one), fg.tensor(np.zeros(1, np.float32)),
                                        "sigmoid").numpy()[:, 0]
    for got in (fg.sigmoid(x).numpy(), fused):
        assert got.dtype == np.float32
        assert np.array_equal(got[~np.isfinite(ref)], ref[~np.isfinite(ref)], equal_nan=True)
        finite = np.isfinite(ref)
        err = np.abs(got[finite].astype(np.float64) - ref[finite]) / np.spacing(np.abs(ref[finite]))
        assert err.max() <= 3
    assert np.array_equal(fg.sigmoid(np.float32([np.inf, -np.inf, 0])).numpy(), [1, 0, 0.5])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_at_plus_minus_1e4(dtype):
    x = np.array([[-1e4, 0.0, 1e4], [1e4, 1e4 - 1, -1e4]], dtype)
    t = fg.tensor(x, requires_grad=True)
    sm = t.softmax().numpy()
    np.testing.assert_allclose(sm, [[0, 0, 1], [1 / (1 + np.exp(-1.0)), np.exp(-1.0) / (1 + np.exp(-1.0)), 0]],
                               atol=1e-6)
    lsm = t.log_softmax().numpy()
    assert np.isfinite(lsm).all() and lsm[0, 0] == pytest.approx(-2e4, rel=1e-6)
    assert np.isfinite(fg.softplus(t).numpy()).all()
    assert fg.softplus(t).numpy()[0, 2] == pytest.approx(1e4)
    assert np.array_equal(fg.sigmoid(t).numpy()[0], np.array([0, 0.5, 1], dtype))
    ce = fg.cross_entropy(t, np.array([0, 2]))
    assert ce.item() == pytest.approx((2e4 + 2e4 + np.log1p(np.exp(-1.0))) / 2, rel=1e-6)
    ce.backward()
    assert np.isfinite(t.grad).all()
    z = fg.tensor(np.array([-1e4, 1e4, 0.0], dtype), requires_grad=True)
    bce = fg.binary_cross_entropy_with_logits(z, np.array([1.0, 0.0, 1.0], dtype), "none")
    np.testing.assert_allclose(bce.numpy(), [1e4, 1e4, np.log(2)], rtol=1e-6)
    bce.sum().backward()
    np.testing.assert_allclose(z.grad, [-1, 1, -0.5], atol=1e-6)


# Values and gradients at +-1e4, against float64 closed forms (scipy's stable softmax/expit):
# each function is seeded with weights w, so every output element's gradient is checked.
X_EXTREME = np.array([[-1e4, 0.0, 1e4], [1e4, 1e4 - 1, -1e4], [-1e4, -1e4 + 2, -1e4 + 1]])
LABELS = np.array([0, 1, 2])


def _logsumexp(t):
    """log-sum-exp as users write it from the public ops: max-shifted, so it cannot overflow."""
    m = t.amax(axis=1, keepdims=True)
    return m + fg.log(fg.exp(t - m).sum(axis=1, keepdims=True))


def _softmax64(x):
    return scipy.special.softmax(x, axis=1)


def _sig64(x):
    return scipy.special.expit(x)


STABLE = {
    # name: (fastgrad f(t, w-shaped target), float64 value, float64 gradient given seed w)
    "log-sum-exp": (_logsumexp,
                    lambda x: np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))
                    + x.max(1, keepdims=True),
                    lambda x, w: _softmax64(x) * w),
    "softmax": (lambda t: t.softmax(), _softmax64,
                lambda x, w: _softmax64(x) * (w - (w * _softmax64(x)).sum(1, keepdims=True))),
    "log_softmax": (lambda t: t.log_softmax(),
                    lambda x: x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))
                    - x.max(1, keepdims=True),
                    lambda x, w: w - _softmax64(x) * w.sum(1, keepdims=True)),
    "sigmoid": (lambda t: fg.sigmoid(t), lambda x: _sig64(x),
                lambda x, w: _sig64(x) * (1 - _sig64(x)) * w),
    "softplus": (lambda t: fg.softplus(t), lambda x: np.maximum(x, 0) + np.log1p(np.exp(-abs(x))),
                 lambda x, w: _sig64(x) * w),
    "bce_with_logits": (
        lambda t: fg.binary_cross_entropy_with_logits(t, np.full(t.shape, 0.25, t.dtype), "none"),
        lambda x: np.maximum(x, 0) + np.log1p(np.exp(-abs(x))) - 0.25 * x,
        lambda x, w: (_sig64(x) - 0.25) * w),
    "cross_entropy": (
        lambda t: fg.cross_entropy(t, LABELS, "none"),
        lambda x: np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
        - x[np.arange(3), LABELS],
        lambda x, w: (_softmax64(x) - np.eye(3)[LABELS]) * w[:, None]),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(STABLE))
def test_values_and_gradients_stay_finite_and_accurate_at_plus_minus_1e4(name, dtype):
    f, value64, grad64 = STABLE[name]
    x = X_EXTREME.astype(dtype)
    t = fg.tensor(x, requires_grad=True)
    y = f(t)
    w = np.random.default_rng(0).uniform(0.5, 1.5, y.shape).astype(dtype)
    (y * w).sum().backward()
    want = value64(x.astype(np.float64))
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert np.isfinite(y.numpy()).all() and np.isfinite(t.grad).all()
    np.testing.assert_allclose(y.numpy(), want, rtol=tol, atol=tol)
    np.testing.assert_allclose(t.grad, grad64(x.astype(np.float64), w.astype(np.float64)),
                               rtol=tol * 10, atol=tol * 10)


# The products of Linear layers (trans_b) run in blocked loops or in BLAS depending on their
# shape and the CPU (kernels/linalg.py: TB_LOOP_MAX_WORK, BLAS_SMALL_KERNELS, VJP_LOOP_MAX_ROWS,
# short rows). These shapes sit on each side of every threshold, with odd row and column counts
# for the loops' remainders; (3, 64, 9) and (7, 33, 17) keep long dot products in the loops on
# every CPU.
PRODUCT_SHAPES = [(1, 64, 64), (2, 3, 5), (3, 7, 4), (9, 8, 5), (16, 64, 64), (17, 65, 7),
                  (32, 64, 64), (33, 64, 64), (100, 2, 16), (100, 16, 16), (64, 128, 10),
                  (5, 1, 130), (128, 64, 64), (3, 64, 9), (7, 33, 17), (2, 64, 64)]


@pytest.mark.parametrize("small_kernels", [False, True])
def test_the_product_shapes_take_both_forward_paths_on_every_cpu(small_kernels, monkeypatch):
    # Which path a shape takes depends on the CPU (BLAS_SMALL_KERNELS: AVX-512 or not); on
    # either kind, the shapes above must still run the blocked loops (with long and short dot
    # products) and BLAS, in both dtypes.
    from fastgrad.kernels import linalg

    monkeypatch.setattr(linalg, "BLAS_SMALL_KERNELS", small_kernels)
    for itemsize in (4, 8):
        paths = {(linalg._use_blas.py_func(m, k, n, itemsize), k * itemsize >= 128)
                 for m, k, n in PRODUCT_SHAPES if m > 1}
        assert paths == {(False, False), (False, True), (True, False), (True, True)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", PRODUCT_SHAPES)
@pytest.mark.parametrize("act", [None, "tanh", "relu"])
def test_linear_layer_products_match_numpy_on_every_kernel_path(m, k, n, act, dtype):
    rng = np.random.default_rng(m * 10_000 + k * 100 + n)
    x, w = rng.normal(size=(m, k)), rng.normal(size=(n, k)) / np.sqrt(k)
    b, g = rng.normal(size=n), rng.normal(size=(m, n))
    X, W, B = (fg.tensor(v.astype(dtype), requires_grad=True) for v in (x, w, b))
    if act is None:
        y = fg.nn.functional.linear(X, W, B)
        ref = x @ w.T + b
        gz = g
    else:
        y = fg.nn.functional.linear_act(X, W, B, act)
        z = x @ w.T + b
        ref = np.tanh(z) if act == "tanh" else np.maximum(z, 0)
        gz = g * (1 - ref ** 2) if act == "tanh" else g * (z > 0)
    (y * fg.tensor(g.astype(dtype))).sum().backward()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(y.numpy(), ref, **tol)
    np.testing.assert_allclose(X.grad, gz @ w, **tol)
    np.testing.assert_allclose(W.grad, gz.T @ x, **tol)
    np.testing.assert_allclose(B.grad, gz.sum(axis=0), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", PRODUCT_SHAPES)
def test_linear_layer_products_add_to_gradients_other_rows_made(m, k, n, dtype):
    """x and w feed two products (and x a third row), so each product's VJPs must add to what
    the others wrote (on the BLAS path: gemm with beta = 1), not overwrite it. (Each use of a
    leaf gets a node of its own, so the shared operands are intermediates: X * 1.)"""
    rng = np.random.default_rng(m * 10_000 + k * 100 + n + 7)
    x, w = rng.normal(size=(m, k)), rng.normal(size=(n, k)) / np.sqrt(k)
    g1, g2, cx = rng.normal(size=(m, n)), rng.normal(size=(m, n)), rng.normal(size=(m, k))
    X, W = (fg.tensor(v.astype(dtype), requires_grad=True) for v in (x, w))
    G1, G2, CX = (fg.tensor(v.astype(dtype)) for v in (g1, g2, cx))
    lin = fg.nn.functional.linear
    Xs, Ws = X * 1.0, W * 1.0
    loss = (Xs * CX).sum() + (lin(Xs, Ws) * G1).sum() + (lin(Xs, Ws) * G2).sum()
    loss.backward()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(X.grad, (g1 + g2) @ w + cx, **tol)
    np.testing.assert_allclose(W.grad, (g1 + g2).T @ x, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch,m,k,n", [(3, 32, 32, 32), (2, 4, 3, 5), (4, 64, 16, 24)])
def test_a_matrix_broadcast_over_a_batch_sums_its_gradient_over_the_batch(batch, m, k, n,
                                                                           dtype):
    """(batch, m, k) @ (k, n) and (m, k) @ (batch, k, n): the shared operand's gradient is
    the sum of one product per batch (accumulated in place on the BLAS path)."""
    rng = np.random.default_rng(batch * 1000 + m)
    a, b = rng.normal(size=(batch, m, k)), rng.normal(size=(k, n))
    g = rng.normal(size=(batch, m, n))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    A, B = (fg.tensor(v.astype(dtype), requires_grad=True) for v in (a, b))
    ((A @ B) * fg.tensor(g.astype(dtype))).sum().backward()
    np.testing.assert_allclose(B.grad, np.einsum("bmk,bmn->kn", a, g), **tol)
    np.testing.assert_allclose(A.grad, g @ b.T, **tol)
    a2, b2 = rng.normal(size=(m, k)), rng.normal(size=(batch, k, n))
    A2, B2 = (fg.tensor(v.astype(dtype), requires_grad=True) for v in (a2, b2))
    ((A2 @ B2) * fg.tensor(g.astype(dtype))).sum().backward()
    np.testing.assert_allclose(A2.grad, np.einsum("bmn,bkn->mk", g, b2), **tol)
    np.testing.assert_allclose(B2.grad, np.einsum("mk,bmn->bkn", a2, g), **tol)
