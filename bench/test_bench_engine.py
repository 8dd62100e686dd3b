"""Eager engine: record an MLP-sized graph and run backward(), against hand-written NumPy
forward + backward of the same graph (784-128-10, batch 64, ReLU, cross-entropy)."""

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.benchmarks.baselines import numpy_step

SIZES, BATCH = [784, 128, 10], 64


def setup(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, SIZES[0])).astype(dtype)
    y = rng.integers(0, SIZES[-1], BATCH)
    model = fg.nn.MLP(SIZES, activation="relu", seed=1, dtype=dtype)
    return x, y, model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("impl", ["fastgrad", "numpy"])
def test_record_and_backward(benchmark, impl, dtype):
    x, y, model = setup(np.dtype(dtype))
    if impl == "fastgrad":
        def run():
            model.zero_grad()
            fg.cross_entropy(model(x), y).backward()
    else:
        params = [p.numpy().copy() for p in model.parameters()]

        def run():  # forward + backward (lr=0: the update is a no-op, as the eager run has none)
            numpy_step(params, x, y, "relu", "ce", 0.0)
    run()
    benchmark.group = f"record+backward 784-128-10 b64 {dtype}"
    benchmark.extra_info["impl"] = impl
    benchmark(run)
