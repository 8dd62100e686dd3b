"""Print (and save as JSON) the MLP training-step table: median time per step and the ratio of
every implementation to fastgrad, measured in one run.

    python bench/compare.py [--dtype float32] [--repeat 7] [--json out.json] [--workload NAME]
"""

import argparse
import json
import pathlib
import platform
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench import workloads as W  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", action="append", choices=["float32", "float64"])
    ap.add_argument("--workload", action="append")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()
    wl = [w for w in W.MLP_WORKLOADS if not args.workload or w.name in args.workload]
    rows = W.run(wl, tuple(args.dtype or ("float32", "float64")), repeat=args.repeat)
    if args.json:
        info = {"machine": platform.machine(), "processor": platform.processor(),
                "python": platform.python_version()}
        pathlib.Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
