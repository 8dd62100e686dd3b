"""What every layer may use: FastgradError and fail(), the timer, the memory guard."""

__all__ = ["errors", "memory", "timing"]  # its modules
