"""The tape and what runs it: the flat arrays a recording fills, their replay by the kernels,
the kernel cache, the BLAS thread count and detect_anomaly's state."""

__all__ = ["anomaly", "blas_threads", "kernel_cache", "tape"]  # its modules
