"""The front end: Tensor and the recorder behind its ops, making tensors, indexing, NumPy's
protocols, and the functional forms (activations, losses, convolutions)."""

__all__ = ["conv", "functional", "losses", "tensor"]  # its modules
