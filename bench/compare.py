"""The MLP training-step table: ``fastgrad bench`` restricted to the MLP workloads.

    python bench/compare.py [--dtype float32] [--repeat 7] [--json out.json] [--workload NAME]
                            [--out DIR]

Every option of ``fastgrad bench`` is accepted (see docs/benchmarks.md).
"""

import sys

from fastgrad.benchmarks.workloads import MLP_WORKLOADS
from fastgrad.benchmarks.command import restricted_main

if __name__ == "__main__":
    sys.exit(restricted_main(MLP_WORKLOADS))
