"""The recurrence table (µs per unrolled step of one BPTT training step): ``fastgrad bench``
restricted to the RNN workloads.

    python bench/compare_rnn.py [--dtype float32] [--repeat 5] [--json out.json] [--out DIR]

Every option of ``fastgrad bench`` is accepted (see docs/benchmarks.md).
"""

import sys

from fastgrad.benchmarks.rnn_workloads import RNN_WORKLOADS
from fastgrad.benchmarks.command import restricted_main

if __name__ == "__main__":
    sys.exit(restricted_main(RNN_WORKLOADS))
