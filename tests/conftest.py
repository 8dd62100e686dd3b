"""Test session setup: a fresh Numba cache directory per session, set before fastgrad loads.

A fresh directory makes every test session (and CI) measure and exercise a cold compile of what
is on disk now. Set FASTGRAD_TEST_CACHE_DIR to reuse one directory across sessions while
developing: that is safe because kernels/_jit.py keys the cache on a digest of every kernel
source, so an edit never serves stale machine code.
"""

import os
import shutil
import tempfile

_REUSED = os.environ.get("FASTGRAD_TEST_CACHE_DIR")
_CACHE = _REUSED or tempfile.mkdtemp(prefix="fastgrad-test-cache-")
os.environ["FASTGRAD_CACHE_DIR"] = _CACHE
os.environ.pop("NUMBA_CACHE_DIR", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    if not _REUSED:
        shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def sample_array(rng, shape, domain, dtype=np.float64):
    """Test inputs for an op's domain: real, positive, nonzero, distinct (no ties), unit
    (|x| < 1), above1, wide (-8 to 8), cond (0/1)."""
    if domain == "positive":
        a = rng.uniform(0.5, 2.0, shape)
    elif domain == "nonzero":
        a = rng.uniform(0.3, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    elif domain == "distinct":
        n = int(np.prod(shape, dtype=np.int64))
        a = (rng.permutation(n) * 0.37 - n * 0.15).reshape(shape)
    elif domain == "unit":  # inside (-1, 1): asin, atanh
        a = rng.uniform(-0.9, 0.9, shape)
    elif domain == "above1":  # acosh
        a = rng.uniform(1.2, 3.0, shape)
    elif domain == "wide":  # every piece of relu6 and hardswish
        a = rng.uniform(-8.0, 8.0, shape)
    elif domain == "cond":
        a = (rng.uniform(size=shape) > 0.5).astype(np.float64)
    else:
        a = rng.standard_normal(shape)
    return np.asarray(a, dtype=dtype)
