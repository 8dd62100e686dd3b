"""The benchmark workloads, the hand-written baselines and the runner behind ``fastgrad bench``.

``workloads``      MLP training steps and every implementation timed on them
``rnn_workloads``  Elman-RNN BPTT steps (and the opt-in long unrolls)
``baselines``      the hand-written MLP steps: NumPy's (also timed by ``fastgrad demo``) and Numba's
``runner``         cells in fresh processes, the table, bench.json / bench.md / bench.png
``paired``         ``--paired``: fastgrad and a reference in alternating rounds in one process
``contended``      ``--contended``: a training step beside busy processes
``command``        the options of ``fastgrad bench`` and which of the above a run takes

Importing this package imports nothing heavy; the submodules import fastgrad (and PyTorch or
JAX only inside the factories that need them). See docs/benchmarks.md.
"""

# Defines nothing: the submodules listed above are imported by name.
__all__ = []
