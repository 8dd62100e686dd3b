"""pytest-benchmark suites: each group times fastgrad and its references in the same run, and
the summary prints every reference's median as a ratio to fastgrad's.

Run: python -m pytest bench --benchmark-only      (not part of the unit tests)

The workloads and baselines live in the installed package (``fastgrad.benchmarks``), shared with
``fastgrad bench``, which measures each case in a fresh process and also reports peak memory.
"""

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # The project's addopts say --benchmark-disable (a plain ``pytest bench`` is then a quick
    # correctness pass); asking for --benchmark-only means: measure.
    if config.getoption("benchmark_only", False):
        config.option.benchmark_disable = False


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups = {}
    for bench in session.benchmarks:
        groups.setdefault(bench.group, {})[bench.extra_info.get("impl", bench.name)] = (
            bench.stats.median)
    tr = terminalreporter
    tr.write_sep("=", "ratios of median time to fastgrad's (same run; > 1 means fastgrad is faster)")
    for group, times in sorted(groups.items()):
        base = times.get("fastgrad")
        if not base:
            continue
        cells = ", ".join(f"{k} {v * 1e6:.1f}us ({v / base:.2f}x)" for k, v in times.items())
        tr.write_line(f"{group}: {cells}")
