"""Training: optimizers, a compiled training step and fg.fit, layers (fg.nn), truncated BPTT,
and the per-step gradient log-norms of a loop."""

__all__ = ["bptt", "carry_norms", "compile", "nn", "optim"]  # its modules
