"""One BPTT training step of the Elman RNN (H=64, I=8), fastgrad against its references."""

import numpy as np
import pytest

from fastgrad.benchmarks import rnn_workloads as R
from fastgrad.benchmarks.workloads import available


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("workload", R.RNN_WORKLOADS, ids=lambda w: w.name)
@pytest.mark.parametrize("impl", list(R.RNN_IMPLEMENTATIONS))
def test_bptt_step(benchmark, impl, workload, dtype):
    if not available(impl):
        pytest.skip(f"{impl} is not installed")
    step = R.RNN_IMPLEMENTATIONS[impl](workload, np.dtype(dtype))
    xs, y = R.data(workload, np.dtype(dtype))
    step(xs, y)
    benchmark.group = f"{workload.name} {dtype}"
    benchmark.extra_info["impl"] = impl
    benchmark(step, xs, y)
