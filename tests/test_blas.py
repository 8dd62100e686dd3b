"""The kernels' BLAS gemm, and the choice of the library behind it (FASTGRAD_BLAS)."""

import itertools
import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from fastgrad.kernels import blas


@numba.njit
def _gemm(trans_a, trans_b, m, n, k, alpha, A, a_off, B, b_off, beta, C, c_off):
    blas.gemm(trans_a, trans_b, m, n, k, alpha, A, a_off, B, b_off, beta, C, c_off)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a,trans_b", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (1.0, 1.0), (1.0, 0.5), (-0.25, 1.0)])
@pytest.mark.parametrize("m,n,k", [(5, 7, 3), (128, 96, 96)], ids=["small", "large"])
def test_gemm_writes_alpha_op_a_times_op_b_plus_beta_c_into_its_block_alone(
        m, n, k, trans_a, trans_b, alpha, beta, dtype):
    """C = alpha op(A) op(B) + beta C (alpha -lr, beta 1: a plain SGD update folded into a
    weight-gradient product). Row-major operands at offsets in flat buffers, as the tape's
    arenas hold them; the values around C's block are untouched, and beta = 0 does not read C
    (NaN there stays out). The large product has more than OPENBLAS_ONE_THREAD_MAX_WORK
    multiply-adds: MKL's, when it is installed."""
    limit = blas.OPENBLAS_ONE_THREAD_MAX_WORK
    assert 5 * 7 * 3 <= limit < 128 * 96 * 96
    rng = np.random.default_rng(int(trans_a) * 8 + int(trans_b) * 4 + int(beta * 2)
                                + int(alpha < 0))
    a_off, b_off, c_off = 2, 5, 4
    op_a, op_b = rng.normal(size=(m, k)), rng.normal(size=(k, n))
    stored_a = op_a.T if trans_a else op_a
    stored_b = op_b.T if trans_b else op_b
    A = np.concatenate([rng.normal(size=a_off), stored_a.ravel(), rng.normal(size=3)])
    B = np.concatenate([rng.normal(size=b_off), stored_b.ravel(), rng.normal(size=3)])
    C = rng.normal(size=c_off + m * n + 3)
    if beta == 0.0:
        C[c_off : c_off + m * n] = np.nan
    A, B, C = (v.astype(dtype) for v in (A, B, C))
    expected = C.astype(np.float64)
    block = expected[c_off : c_off + m * n].reshape(m, n)
    old = np.nan_to_num(block) if beta == 0.0 else block
    expected[c_off : c_off + m * n] = (alpha * (op_a @ op_b) + beta * old).ravel()
    _gemm(trans_a, trans_b, m, n, k, alpha, A, a_off, B, b_off, beta, C, c_off)
    tol = 1e-5 * k if dtype == np.float32 else 1e-12 * k
    np.testing.assert_allclose(C, expected, rtol=tol, atol=tol)


def _provider_in_a_fresh_process(value):
    env = dict(os.environ, FASTGRAD_BLAS=value)
    code = "from fastgrad.kernels import blas; print(blas.PROVIDER)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)


def _mkl_installed(wide=False):
    """Whether MKL loads from this environment (``auto``'s search), or from anywhere (``mkl``)."""
    return blas._mkl_gemm(wide) is not None


def test_fastgrad_blas_scipy_uses_scipys_blas():
    run = _provider_in_a_fresh_process("scipy")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "scipy"


def test_an_unknown_fastgrad_blas_value_is_an_error_that_lists_the_choices():
    run = _provider_in_a_fresh_process("openblas")
    assert run.returncode != 0
    assert "FASTGRAD_BLAS='openblas'" in run.stderr and "auto, mkl, scipy" in run.stderr


def test_fastgrad_blas_mkl_uses_mkl_or_says_how_to_install_it():
    run = _provider_in_a_fresh_process("mkl")
    if _mkl_installed(wide=True):
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("mkl")
    else:
        assert run.returncode != 0
        assert 'pip install "fastgrad[mkl]"' in run.stderr


def test_auto_picks_mkl_exactly_when_it_is_installed():
    run = _provider_in_a_fresh_process("auto")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("mkl") == _mkl_installed()


_TRAIN_STEPS = """
import json, numpy as np, fastgrad as fg
rng = np.random.default_rng(0)
X = rng.normal(size=(96, 40)); y = rng.integers(0, 5, size=96)
out = {}
for dtype in (np.float32, np.float64):
    model = fg.nn.MLP([40, 300, 5], activation="relu", seed=0, dtype=dtype)
    opt = fg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = fg.compile(lambda xb, yb: fg.nn.functional.cross_entropy(model(xb), yb), optimizer=opt)
    losses = [float(step(X.astype(dtype), y)) for _ in range(5)]
    params = np.concatenate([p.numpy().ravel() for p in model.parameters()]).astype(float)
    out[np.dtype(dtype).name] = dict(losses=losses, params=params.tolist())
print(json.dumps(out))
"""


@pytest.mark.skipif(not _mkl_installed(), reason="MKL is not installed (fastgrad[mkl])")
def test_mkl_and_scipys_blas_train_to_the_same_values_to_rounding():
    """Five SGD steps of an MLP whose products go to BLAS, once with each library."""
    runs = {}
    for value in ("scipy", "mkl"):
        env = dict(os.environ, FASTGRAD_BLAS=value)
        run = subprocess.run([sys.executable, "-c", _TRAIN_STEPS], env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        runs[value] = json.loads(run.stdout)
    for dtype, tol in (("float32", 1e-4), ("float64", 1e-10)):
        s, k = runs["scipy"][dtype], runs["mkl"][dtype]
        np.testing.assert_allclose(k["losses"], s["losses"], rtol=tol, err_msg=dtype)
        np.testing.assert_allclose(k["params"], s["params"], rtol=tol, atol=tol, err_msg=dtype)


@pytest.mark.parametrize("rule,shapes", [
    ("matmul_rule", [(2**31, 2), (2, 3)]),
    ("matmul_rule", [(4, 2), (2, 2**31)]),
    ("linear_rule", [(2**31, 4), (3, 4), (3,)]),
    ("linear_act_rule", [(2, 2**31), (3, 2**31), (3,)]),
])
def test_a_product_too_large_for_32_bit_blas_sizes_is_refused_when_recorded(rule, shapes):
    """The recorder checks only shapes, so sizes no array could fit are cheap to try."""
    from fastgrad.ops import matmul as ops  # the product family's module holds the rules
    from fastgrad.errors import FastgradError

    extra = ("relu",) if rule == "linear_act_rule" else ()
    with pytest.raises(FastgradError, match="BLAS takes sizes up to 2147483647"):
        getattr(ops, rule)("op", shapes, *extra)
    fine = [tuple(min(d, 64) for d in s) for s in shapes]
    getattr(ops, rule)("op", fine, *extra)  # the same product, small: recorded
