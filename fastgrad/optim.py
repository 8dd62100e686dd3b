"""Optimizers with PyTorch's update rules, fused into one jitted loop over a flat buffer.

Constructing an optimizer packs its parameters into one contiguous buffer (``opt.flat``) and
makes each parameter's values a view of it, so ``step()`` and a compiled training step update
every parameter in one native loop. Formulas: docs/optimizers.md and kernels/optim.py.

>>> import fastgrad as fg, numpy as np
>>> w = fg.nn.Parameter(np.array([1.0, -2.0]))
>>> opt = fg.optim.SGD([w], lr=0.1)
>>> (w * w).sum().backward(); opt.step()
>>> w.numpy()
array([ 0.8, -1.6])
"""

from __future__ import annotations

import math

import numpy as np

from . import kernels
from .errors import fail
from .kernels import optim as _k
from .tensor import Tensor, guard_new


class Options(dict):
    """An optimizer's options: a dict that counts its changes (``version``), so that
    ``Optimizer.hyper`` rebuilds the kernel's vector only after one. Comparing the dicts on
    every compiled step instead cost about 1 µs once the previous step had evicted them from
    cache."""

    version = 0

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.version += 1

    def __delitem__(self, key):
        super().__delitem__(key)
        self.version += 1

    def __ior__(self, other):
        self.update(other)
        return self

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        self.version += 1

    def setdefault(self, key, default=None):
        self.version += 1
        return super().setdefault(key, default)

    def pop(self, *args):
        self.version += 1
        return super().pop(*args)

    def popitem(self):
        self.version += 1
        return super().popitem()

    def clear(self):
        super().clear()
        self.version += 1


class Optimizer:
    """Base class: flat parameter/gradient buffers, state buffers, step counter.

    ``flat``, ``flat_grad`` and the three ``state`` buffers are the rows of one block
    (``buffers``), fixed for the optimizer's life (read-only attributes; write into them):
    parameters are views of ``flat``, and a compiled step passes the block to its native
    entry.
    """

    kind = -1
    defaults: dict = {}

    def __init__(self, params, **options):
        params = list(params)
        if not params:
            raise fail(type(self).__name__, "got an empty parameter list",
                       "pass model.parameters() of a model that has parameters")
        for p in params:
            if not isinstance(p, Tensor) or p.tape is not None or not p.requires_grad:
                raise fail(type(self).__name__, "parameters must be leaf tensors with "
                           "requires_grad=True", "pass model.parameters()")
        dtypes = {p.dtype for p in params}
        if len(dtypes) > 1:
            raise fail(type(self).__name__, f"parameters mix dtypes {sorted(map(str, dtypes))}",
                       "make every parameter one dtype (model.astype(np.float32))")
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise fail(type(self).__name__, f"unknown options {sorted(unknown)}",
                       f"use {sorted(self.defaults)}")
        self._options = Options({**self.defaults, **options})
        self._check_options()
        self.params = params
        self.dtype = params[0].dtype
        sizes = [p.size for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        # one block, so that a compiled step passes its native entry one array, not five
        guard_new(type(self).__name__, 5 * int(self.offsets[-1]) * self.dtype.itemsize,
                  (5, int(self.offsets[-1])))
        self._buffers = np.zeros((5, int(self.offsets[-1])), self.dtype)
        self._flat, self._flat_grad = self._buffers[0], self._buffers[1]
        self._state = tuple(self._buffers[2:])
        for p, a, b in zip(params, self.offsets[:-1], self.offsets[1:]):
            self._flat[a:b] = p.numpy().ravel()
            p._data = self._flat[a:b].reshape(p.shape)  # the parameter becomes a view
        self.t = 0  # steps taken
        self._hyper_version = self._hyper_of = None

    def __setstate__(self, state):
        """copy.deepcopy / pickle: ``flat``, ``flat_grad`` and ``state`` become rows of the
        copied block again, and the copied parameters views of the copied ``flat``."""
        self.__dict__.update(state)
        b = self._buffers
        self._flat, self._flat_grad, self._state = b[0], b[1], tuple(b[2:])
        for p, a, e in zip(self.params, self.offsets[:-1], self.offsets[1:]):
            p._data = self._flat[a:e].reshape(p.shape)

    @property
    def options(self) -> Options:
        """The hyper-parameters by name (lr, momentum, betas, ...); change them in place or
        assign a new dict."""
        return self._options

    @options.setter
    def options(self, value):
        self._options = Options(value)

    @property
    def buffers(self) -> np.ndarray:
        """(5, number of parameters): the rows ``flat``, ``flat_grad`` and ``state``."""
        return self._buffers

    @property
    def flat(self) -> np.ndarray:
        """Every parameter's values, back to back (each parameter is a view of it)."""
        return self._flat

    @property
    def flat_grad(self) -> np.ndarray:
        """The gradients of ``flat``, as the last step (or ``step()``'s input) left them. A
        compiled plain-SGD step may leave a Linear layer's entries stale: it folds their update
        into the backward sweep (``fg.compile(..., keep_grads=True)`` writes them all)."""
        return self._flat_grad

    @property
    def state(self) -> tuple:
        """The three state buffers the update rule uses (momentum, moments, ...)."""
        return self._state

    @property
    def lr(self):
        return self.options["lr"]

    @lr.setter
    def lr(self, value):
        self.options["lr"] = float(value)

    def hyper(self) -> np.ndarray:
        """The options as the float64 array the update kernel reads (rebuilt when they change)."""
        options = self._options
        if options.version != self._hyper_version or options is not self._hyper_of:
            self._hyper_version, self._hyper_of = options.version, options
            # float64 whatever the options' types (a Fraction, np.float32s, ints): the
            # compiled step's native entry reads it as float64 without checking
            self._hyper = np.ascontiguousarray(self._hyper_array(), dtype=np.float64).ravel()
        return self._hyper

    def _check_options(self):
        if self.options["lr"] < 0:
            raise fail(type(self).__name__, f"invalid learning rate {self.options['lr']}",
                       "use lr >= 0")

    def _hyper_array(self) -> np.ndarray:
        raise NotImplementedError

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    def step(self):
        """Apply one update from each parameter's ``.grad`` (missing grads count as zero)."""
        for p, a, b in zip(self.params, self.offsets[:-1], self.offsets[1:]):
            self.flat_grad[a:b] = 0 if p.grad is None else np.asarray(p.grad).ravel()
        self.t += 1
        _k.optimizer_update(self.kind, self.flat, self.flat_grad, *self.state, self.hyper(),
                            self.t)

    def state_dict(self) -> dict:
        """Options, step count and state buffers (NumPy arrays; exact round trip)."""
        return {"type": type(self).__name__, "options": dict(self.options), "t": self.t,
                "state": [s.copy() for s in self.state]}

    def load_state_dict(self, state: dict):
        if state.get("type") != type(self).__name__:
            raise fail("load_state_dict", f"state of a {state.get('type')} given to a "
                       f"{type(self).__name__}", "load it into the same optimizer type")
        if any(np.shape(s) != self.flat.shape for s in state["state"]):
            raise fail("load_state_dict", "state buffers do not match this optimizer's "
                       f"{self.flat.size} parameters", "build the same model first")
        self.options.update(state["options"])
        self.t = int(state["t"])
        for mine, theirs in zip(self.state, state["state"]):
            mine[...] = theirs


class SGD(Optimizer):
    """torch.optim.SGD: momentum, dampening, nesterov, weight_decay."""

    kind = _k.SGD
    defaults = dict(lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0)

    def _check_options(self):
        super()._check_options()
        o = self.options
        if o["nesterov"] and (o["momentum"] <= 0 or o["dampening"] != 0):
            raise fail("SGD", "nesterov needs momentum > 0 and dampening = 0",
                       "set momentum or drop nesterov")

    def _hyper_array(self):
        o = self.options
        return np.array([o["lr"], o["momentum"], o["dampening"], float(o["nesterov"]),
                         o["weight_decay"]])


class Adagrad(Optimizer):
    """torch.optim.Adagrad: lr_decay, weight_decay, eps (initial accumulator 0)."""

    kind = _k.ADAGRAD
    defaults = dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10)

    def _hyper_array(self):
        o = self.options
        return np.array([o["lr"], o["lr_decay"], o["weight_decay"], o["eps"]])


class RMSprop(Optimizer):
    """torch.optim.RMSprop: alpha, eps, weight_decay, momentum, centered."""

    kind = _k.RMSPROP
    defaults = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                    centered=False)

    def _hyper_array(self):
        o = self.options
        return np.array([o["lr"], o["alpha"], o["eps"], o["weight_decay"], o["momentum"],
                         float(o["centered"])])


class Adam(Optimizer):
    """torch.optim.Adam: betas, eps, weight_decay (L2, added to the gradient), amsgrad."""

    kind = _k.ADAM
    decoupled = False
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False)

    def _hyper_array(self):
        o = self.options
        return np.array([o["lr"], o["betas"][0], o["betas"][1], o["eps"], o["weight_decay"],
                         float(o["amsgrad"]), float(self.decoupled)])


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay p *= 1 - lr*weight_decay."""

    decoupled = True
    defaults = dict(Adam.defaults, weight_decay=1e-2)


# ----------------------------------------------------------------------------- schedules
class LRScheduler:
    """Set ``optimizer.lr`` from the epoch count; call ``step()`` once per epoch (as PyTorch)."""

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.epoch = 0

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self):
        self.epoch += 1
        self.optimizer.lr = self.lr_at(self.epoch)

    def get_last_lr(self):
        return [self.optimizer.lr]


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        self.step_size, self.gamma = int(step_size), float(gamma)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2."""

    def __init__(self, optimizer, T_max, eta_min=0.0):  # noqa: N803 - PyTorch's name
        super().__init__(optimizer)
        self.T_max, self.eta_min = int(T_max), float(eta_min)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2


__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "StepLR",
           "CosineAnnealingLR", "kernels"]
