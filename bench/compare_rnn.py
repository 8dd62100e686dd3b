"""Print (and save as JSON) the recurrence table: µs per unrolled step of one BPTT training
step, every implementation against fastgrad, measured in one run.

    python bench/compare_rnn.py [--dtype float32] [--repeat 5] [--json out.json]
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench import rnn_workloads as R  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", action="append", choices=["float32", "float64"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = R.run(dtypes=tuple(args.dtype or ("float32", "float64")), repeat=args.repeat)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
