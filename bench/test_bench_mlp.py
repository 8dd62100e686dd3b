"""One MLP training step (forward + backward + SGD) for every workload of the training issue,
fastgrad (compiled) against hand-written NumPy and Numba, and PyTorch / JAX when installed."""

import numpy as np
import pytest

from fastgrad.benchmarks import workloads as W

IMPLS = ["fastgrad", "fastgrad-eager", "numpy", "numba", "torch", "jax"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("workload", W.MLP_WORKLOADS, ids=lambda w: w.name)
@pytest.mark.parametrize("impl", IMPLS)
def test_training_step(benchmark, impl, workload, dtype):
    if not W.available(impl):
        pytest.skip(f"{impl} is not installed")
    step = W.IMPLEMENTATIONS[impl](workload, np.dtype(dtype))
    x, y = W.data(workload, np.dtype(dtype))
    for _ in range(3):
        step(x, y)
    benchmark.group = f"{workload.name} {dtype}"
    benchmark.extra_info["impl"] = impl
    benchmark(step, x, y)
