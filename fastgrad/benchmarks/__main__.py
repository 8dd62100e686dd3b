"""``python -m fastgrad.benchmarks cell WORKLOAD DTYPE IMPL``: one benchmark cell, measured in
this fresh process and printed as JSON (what ``fastgrad bench`` runs for every cell);
``python -m fastgrad.benchmarks [options]`` is ``fastgrad bench [options]``."""

import sys

if len(sys.argv) > 1 and sys.argv[1] == "cell":
    from .runner import cell_main

    sys.exit(cell_main(sys.argv[2:]))
else:
    from ..cli import main

    sys.exit(main(["bench"] + sys.argv[1:]))
