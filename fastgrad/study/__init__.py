"""The lecture's studies (fg.study): exploding and vanishing gradients, clipping, saturation,
dead ReLUs, data scale; their results, tables and plots; sweeps over a grid of cells."""

from .study import *  # noqa: F401,F403
from .study import __all__  # noqa: F401
