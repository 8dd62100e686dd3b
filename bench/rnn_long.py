"""BPTT over very long unrolls: one training step of the 64-unit Elman RNN (batch 1, float32)
at T = 10^6 and 10^7 with checkpoint="sqrt" and stack_outputs=False, reporting time per unrolled
step and peak memory, each in a fresh process: ``fastgrad bench --workload 'long-*'``.

    python bench/rnn_long.py [--workload long-rnn-h64-T1000000-b1] [--json out.json] [--out DIR]

Each workload runs three steps (trace, calibrate, time): about 35 s at 10^6 and 6 min at 10^7.
"""

import sys

from fastgrad.benchmarks.command import restricted_main
from fastgrad.benchmarks.rnn_workloads import RNN_LONG_WORKLOADS

if __name__ == "__main__":
    sys.exit(restricted_main(RNN_LONG_WORKLOADS))
