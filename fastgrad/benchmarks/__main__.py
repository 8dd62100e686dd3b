"""``python -m fastgrad.benchmarks cell WORKLOAD DTYPE IMPL``: one benchmark cell, measured in
this fresh process and printed as JSON (what ``fastgrad bench`` runs for every cell);
``... pair WORKLOAD DTYPE IMPL``: the same for one pair of ``fastgrad bench --paired``;
``python -m fastgrad.benchmarks [options]`` is ``fastgrad bench [options]``."""

import sys

# A script (``python -m fastgrad.benchmarks``): it defines nothing to import.
__all__ = []

if len(sys.argv) > 1 and sys.argv[1] == "cell":
    from .runner import cell_main

    sys.exit(cell_main(sys.argv[2:]))
elif len(sys.argv) > 1 and sys.argv[1] == "pair":
    from .paired import pair_main

    sys.exit(pair_main(sys.argv[2:]))
else:
    from ..cli import main

    sys.exit(main(["bench"] + sys.argv[1:]))
