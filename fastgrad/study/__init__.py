"""Gradient studies: the lecture's unintuitive effects as one-line experiments, and sweeps of them.

Modules, in the order a study is built: results (what a study returns), spectral (spectral
and forward-mode tools), rnn, clipping, saturation, dead_relus, data_scale (the studies), cells
(a sweep cell's file), sweep, cli (``fastgrad study``).

Each study returns a result whose ``table()`` prints plainly (``to_csv`` / ``to_json`` save it)
and whose ``plot(path)`` draws it with matplotlib (the optional ``plot`` extra). ``sweep`` runs
any study over a grid through a ``concurrent.futures.Executor``: a local process pool, or a Dask
cluster. Methods and references: docs/studies.md.

- ``rnn_gradient_norms``: per-timestep ||dL/dh_t|| of a long unroll, read off the ONE backward
  sweep: a zero "probe" e_t is added to every carry (h_t = f(h_{t-1}, x_t) + e_t, fed as scan
  inputs), so dL/de_t = dL/dh_t for every t, under checkpointing too. Compared with
  log(spectral radius) and with the top Lyapunov exponent (Pascanu, Mikolov & Bengio 2013).
- ``lyapunov_exponents`` (Benettin et al. 1980) and ``jacobian_product_norms``: forward mode
  (``fg.jvp``) through the recorded step, k tangent directions at once, re-orthonormalised by QR.
- ``gradient_clipping``, ``saturation``, ``dead_relus``, ``data_scale``: training-time effects.

Every study is seeded and deterministic: the same call gives the same table on any executor.
Wall times are kept out of the tables (``result.seconds``)."""

from __future__ import annotations

from .results import StudyResult, Table, format_table
from .spectral import (
    WEIGHTS, growth_rate, jacobian_product_norms, largest_singular_value, log_growth_rate,
    lyapunov_exponents, recurrent_matrix, set_spectral_radius, spectral_radius,
)
from .rnn import RNNGradientNorms, rnn_gradient_norms
from .clipping import ClippingResult, adding_problem, gradient_clipping
from .saturation import SaturationResult, layer_gradient_stats, local_gradient, saturation
from .dead_relus import DeadReLUResult, SCENARIOS, dead_relu_fraction, dead_relus
from .data_scale import DataScaleResult, data_scale
from .cells import (
    CELL_FORMAT, CELL_VERSION, CellFileError, decode_cell_value, encode_cell_value, read_cell_file,
    write_cell_file,
)
from .sweep import SweepResult, grid_cells, sweep
from .cli import add_parser, parse_range

__all__ = [
    "CELL_FORMAT", "CELL_VERSION", "CellFileError", "ClippingResult", "DataScaleResult",
    "DeadReLUResult", "RNNGradientNorms", "SCENARIOS", "SaturationResult", "StudyResult",
    "SweepResult", "Table", "WEIGHTS", "add_parser", "adding_problem", "data_scale",
    "dead_relu_fraction", "dead_relus", "decode_cell_value", "encode_cell_value", "format_table",
    "gradient_clipping", "grid_cells", "growth_rate", "jacobian_product_norms",
    "largest_singular_value", "layer_gradient_stats", "local_gradient", "log_growth_rate",
    "lyapunov_exponents", "parse_range", "read_cell_file", "recurrent_matrix",
    "rnn_gradient_norms", "saturation", "set_spectral_radius", "spectral_radius", "sweep",
    "write_cell_file",
]
