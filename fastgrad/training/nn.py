"""Neural-network building blocks: Module, Parameter, Linear, MLP, activations, initialisers.

Layouts follow PyTorch (a Linear weight is (out_features, in_features); y = x W^T + b), so
state dicts and weights compare one to one. Initialisers are seeded: ``fg.manual_seed(n)`` or a
``seed=`` argument makes a model reproducible.

>>> import fastgrad as fg, numpy as np
>>> model = fg.nn.MLP([4, 8, 3], activation="tanh", seed=0)
>>> model(np.ones((2, 4))).shape
(2, 3)
>>> [name for name, _ in model.named_parameters()]
['layers.0.weight', 'layers.0.bias', 'layers.1.weight', 'layers.1.bias']
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ..frontend import functional
from ..core.errors import fail
from ..ops import LINEAR_ACTIVATIONS, int_tuple, real
from ..frontend.modes import dtype_arg, get_default_dtype, is_replayed
from ..frontend.inputs import guard_new, make_rng
from ..frontend.tensor import Tensor, as_tensor, concatenate, real_array, stack
from ..frontend.creation import zeros
from ..transforms.scan import scan

__all__ = ["Activation", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv1d", "Conv2d", "Dropout",
           "ELU", "Embedding",
           "Flatten", "GELU", "GRU", "Hardswish", "MaxPool2d",
           "INITS", "Identity", "LSTM", "LayerNorm", "LeakyReLU", "Linear", "LogSigmoid", "MLP",
           "Mish", "Module", "Parameter", "RNN", "ReLU", "ReLU6", "SELU", "Sequential", "SiLU",
           "Sigmoid", "Softplus", "Tanh",
           "functional", "guard_weights", "init", "init_default_bias", "layer_sizes",
           "make_weight", "manual_seed", "utils"]

_RNG = [np.random.default_rng(0)]


def manual_seed(seed: int):
    """Seed the generator that initialisers use when no ``seed=`` is given."""
    if seed is None or isinstance(seed, np.random.Generator):
        raise fail("manual_seed", f"seed must be a non-negative int, got {seed!r}",
                   "pass e.g. fg.manual_seed(0)")
    _RNG[0] = make_rng("manual_seed", seed)


def _rng(seed, op="init"):
    if seed is None:
        return _RNG[0]
    return make_rng(op, seed)


def layer_sizes(op, **sizes) -> list:
    """Each size as a Python int >= 1 (refusing floats, bools, strings, None, 0 and negatives)."""
    for name, n in sizes.items():
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise fail(op, f"{name} must be an int >= 1, got {n!r}", "pass positive int sizes")
    return [int(n) for n in sizes.values()]


def guard_weights(op, shapes, dtype):
    """The memory guard for a layer's parameters, before any is drawn: all of them in
    ``dtype``, plus the largest drawn in float64 and cast (both held while casting)."""
    sizes = [math.prod(s) for s in shapes]
    guard_new(op, sum(sizes) * dtype.itemsize + max(sizes) * (8 + dtype.itemsize),
              max(shapes, key=math.prod))


class Parameter(Tensor):
    """A leaf tensor that requires grad and is registered by the Module holding it."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        data = np.array(data, copy=True)
        if data.dtype.kind != "f":
            data = data.astype(get_default_dtype())
        super().__init__(data, requires_grad=requires_grad)


class Module:
    """Base class: attribute Parameters and Modules are registered in assignment order."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    def register_buffer(self, name, value):
        """Keep ``value`` (an array) as a tensor that is state but not a parameter (BatchNorm's
        running statistics, as torch's buffers): in ``state_dict`` and ``load_state_dict``, cast
        by ``astype``, never given to an optimizer; read at its current values by compiled
        steps. Returns the tensor, also set as the attribute ``name``."""
        if not isinstance(name, str) or not name.isidentifier() or name in self._parameters:
            raise fail("register_buffer", f"name {name!r}", "pass a new attribute name")
        buffer = Tensor(np.array(real_array("register_buffer", name, value), copy=True))
        self._buffers[name] = buffer
        object.__setattr__(self, name, buffer)
        return buffer

    def _named(self, table, prefix):
        """(dotted name, tensor) of ``table`` (``_parameters`` or ``_buffers``), then of each
        submodule's, as PyTorch's named_parameters / named_buffers order them."""
        for name, t in getattr(self, table).items():
            yield prefix + name, t
        for name, m in self._modules.items():
            yield from m._named(table, prefix + name + ".")

    def named_buffers(self, prefix=""):
        return self._named("_buffers", prefix)

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise fail(type(self).__name__, "Module.__init__() was not called",
                       "call super().__init__() first in your __init__")
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._buffers:  # a buffer assigned anew stays a buffer, as PyTorch's
            value = value if isinstance(value, Tensor) and value._tape is None else \
                Tensor(np.array(real_array(type(self).__name__, name, value), copy=True))
            self._buffers[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def named_parameters(self, prefix=""):
        return self._named("_parameters", prefix)

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def _state(self):
        """Parameters and buffers by dotted name, in PyTorch's order (a module's parameters,
        then its buffers, then its children's)."""
        out = OrderedDict((n, p) for n, p in self._parameters.items())
        out.update(self._buffers)
        for name, m in self._modules.items():
            out.update((f"{name}.{k}", v) for k, v in m._state().items())
        return out

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter's and buffer's values, by dotted name."""
        return OrderedDict((n, np.array(t.numpy(), copy=True)) for n, t in self._state().items())

    def load_state_dict(self, state, strict=True):
        """Copy values in place (an optimizer's flat buffer keeps seeing them).

        ``state`` maps dotted names to arrays of real numbers of each parameter's shape."""
        if not isinstance(state, Mapping):
            raise fail("load_state_dict", f"expected the dict that state_dict() returns (arrays "
                       f"by name), got {type(state).__name__}",
                       "pass model.state_dict() or fg.load(path)[key]")
        mine = self._state()
        missing, unexpected = set(mine) - set(state), set(state) - set(mine)
        if strict and (missing or unexpected):
            raise fail("load_state_dict", f"missing keys {sorted(missing)}, unexpected keys "
                       f"{sorted(unexpected)}", "load a state dict of the same architecture, "
                       "or pass strict=False")
        for name, value in state.items():
            if name in mine:
                p = mine[name]
                value = real_array("load_state_dict", name, value)
                if value.shape != p.shape:
                    raise fail("load_state_dict", f"{name}: saved shape {value.shape} vs "
                               f"model shape {p.shape}", "build the model with the same sizes")
                p.numpy()[...] = value

    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def astype(self, dtype):
        """Cast every parameter and float buffer to ``dtype`` (before building an optimizer
        over them)."""
        for m in self.modules():
            for name, p in list(m._parameters.items()):
                setattr(m, name, Parameter(p.numpy().astype(dtype)))
            for name, b in list(m._buffers.items()):
                if b.dtype.kind == "f":
                    m.register_buffer(name, b.numpy().astype(dtype))
        return self

    def __repr__(self):
        inner = "".join(f"\n  ({n}): {m!r}".replace("\n", "\n  ") for n, m in self._modules.items())
        return f"{type(self).__name__}({self.extra_repr()}{inner}{chr(10) if inner else ''})"

    def extra_repr(self):
        return ""


# ----------------------------------------------------------------------------- initialisers
class init:  # noqa: N801 - a namespace, spelled as torch.nn.init
    """Seeded initialisers returning arrays for a weight of shape (fan_out, fan_in, ...)."""

    @staticmethod
    def fans(shape):
        """(fan_in, fan_out) of a weight of ``shape`` (out, in, *kernel), as PyTorch counts them.

        fan_in = in * prod(kernel), fan_out = out * prod(kernel); a 1-d shape (n,) gives (n, n).

        >>> import fastgrad as fg
        >>> fg.nn.init.fans((4, 3))
        (3, 4)
        >>> fg.nn.init.fans((8, 3, 5))
        (15, 40)
        """
        shape = int_tuple("init", "shape", shape, minimum=0)
        if len(shape) < 2:
            return shape[0] if shape else 1, shape[0] if shape else 1
        receptive = math.prod(shape[2:])
        return shape[1] * receptive, shape[0] * receptive

    @staticmethod
    def gain(activation):
        """The recommended init gain for ``activation`` (as torch.nn.init.calculate_gain).

        relu sqrt(2), tanh 5/3, leaky_relu sqrt(2 / (1 + 0.01^2)), selu 3/4, anything else 1.

        >>> import fastgrad as fg
        >>> fg.nn.init.gain("tanh"), fg.nn.init.gain(None)
        (1.6666666666666667, 1.0)
        """
        return {"relu": math.sqrt(2.0), "tanh": 5.0 / 3, "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)),
                "selu": 0.75}.get(activation, 1.0)

    @staticmethod
    def normal(shape, std=0.01, seed=None):
        """An array of ``shape`` drawn from N(0, std^2).

        ``seed``: an int, an np.random.Generator, or None for the ``fg.manual_seed`` generator.

        >>> import fastgrad as fg
        >>> w = fg.nn.init.normal((10000,), std=0.1, seed=0)
        >>> w.shape, round(float(w.std()), 2)
        ((10000,), 0.1)
        """
        return _rng(seed).normal(0.0, _scale("std", std), _init_shape(shape))

    @staticmethod
    def xavier_uniform(shape, gain=1.0, seed=None):
        """An array of ``shape`` drawn from U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out)).

        Glorot & Bengio (2010); fans as ``init.fans``, ``seed`` as ``init.normal``.

        >>> import fastgrad as fg, numpy as np
        >>> w = fg.nn.init.xavier_uniform((4, 3), seed=0)
        >>> w.shape, bool(np.abs(w).max() <= np.sqrt(6 / (3 + 4)))
        ((4, 3), True)
        """
        shape, gain = _init_shape(shape), _scale("gain", gain)
        fan_in, fan_out = init.fans(shape)
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        return _rng(seed).uniform(-bound, bound, shape)

    @staticmethod
    def xavier_normal(shape, gain=1.0, seed=None):
        """An array of ``shape`` drawn from N(0, s^2), s = gain * sqrt(2 / (fan_in + fan_out)).

        Glorot & Bengio (2010); fans as ``init.fans``, ``seed`` as ``init.normal``.

        >>> import fastgrad as fg
        >>> w = fg.nn.init.xavier_normal((200, 300), seed=0)  # s = sqrt(2 / 500) = 0.063
        >>> w.shape, round(float(w.std()), 2)
        ((200, 300), 0.06)
        """
        shape, gain = _init_shape(shape), _scale("gain", gain)
        fan_in, fan_out = init.fans(shape)
        return _rng(seed).normal(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), shape)

    @staticmethod
    def kaiming_uniform(shape, gain=math.sqrt(2.0), seed=None):
        """An array of ``shape`` drawn from U(-b, b), b = gain * sqrt(3 / fan_in).

        He et al. (2015); the default gain is relu's; ``seed`` as ``init.normal``.

        >>> import fastgrad as fg, numpy as np
        >>> w = fg.nn.init.kaiming_uniform((4, 6), seed=0)
        >>> w.shape, bool(np.abs(w).max() <= np.sqrt(2.0) * np.sqrt(3 / 6))
        ((4, 6), True)
        """
        shape, gain = _init_shape(shape), _scale("gain", gain)
        fan_in, _ = init.fans(shape)
        bound = gain * math.sqrt(3.0 / fan_in)
        return _rng(seed).uniform(-bound, bound, shape)

    @staticmethod
    def kaiming_normal(shape, gain=math.sqrt(2.0), seed=None):
        """An array of ``shape`` drawn from N(0, s^2), s = gain / sqrt(fan_in).

        He et al. (2015); the default gain is relu's; ``seed`` as ``init.normal``.

        >>> import fastgrad as fg
        >>> w = fg.nn.init.kaiming_normal((100, 400), seed=0)  # s = sqrt(2 / 400) = 0.0707
        >>> w.shape, round(float(w.std()), 2)
        ((100, 400), 0.07)
        """
        shape, gain = _init_shape(shape), _scale("gain", gain)
        fan_in, _ = init.fans(shape)
        return _rng(seed).normal(0.0, gain / math.sqrt(fan_in), shape)

    @staticmethod
    def orthogonal(shape, gain=1.0, seed=None):
        """A random (semi-)orthogonal array of ``shape`` times ``gain`` (Saxe et al. 2014).

        Seen as a matrix (shape[0], prod(shape[1:])), its rows (if fewer) or its columns are
        orthonormal; ``seed`` as ``init.normal``.

        >>> import fastgrad as fg, numpy as np
        >>> q = fg.nn.init.orthogonal((3, 5), seed=0)
        >>> q.shape, np.allclose(q @ q.T, np.eye(3))
        ((3, 5), True)
        """
        shape, gain = _init_shape(shape), _scale("gain", gain)
        rows, cols = shape[0], math.prod(shape[1:])
        a = _rng(seed).normal(0.0, 1.0, (max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))  # makes the distribution uniform (Mezzadri 2007)
        if rows < cols:
            q = q.T
        return gain * q.reshape(shape)

    @staticmethod
    def pytorch_default(shape, fan_in, seed=None):
        """torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        return _rng(seed).uniform(-bound, bound, shape)


def _bound(op, what, value) -> float:
    """A clipping bound: a real number >= 0 (inf allowed: no clipping); a negative bound would
    flip or cross the gradients, NaN would make them NaN."""
    value = real(op, what, value)
    if not value >= 0:
        raise fail(op, f"{what} must be >= 0, got {value}", f"pass e.g. {what}=1.0")
    return value


def _scale(what, value) -> float:
    """An initialiser's std or gain: a finite real number >= 0."""
    value = real("init", what, value)
    if not (math.isfinite(value) and value >= 0):
        raise fail("init", f"{what} must be finite and >= 0, got {value}",
                   f"pass e.g. {what}=0.01" if what == "std" else f"pass e.g. {what}=1.0")
    return value


def _init_shape(shape) -> tuple:
    """An initialiser's weight shape: ints >= 1 (at least one axis), guarded in float64."""
    shape = int_tuple("init", "shape", shape, minimum=1)
    if not shape:
        raise fail("init", "a weight needs at least one axis", "pass e.g. shape=(out, in)")
    guard_new("init", math.prod(shape) * 8, shape)
    return shape


INITS = ("default", "normal", "xavier_uniform", "xavier_normal", "kaiming_uniform",
         "kaiming_normal", "orthogonal")


def make_weight(shape, method="default", activation=None, std=0.01, seed=None):
    """A float64 weight array of ``shape`` (out_features, in_features, ...) from one of INITS.

    "default" is PyTorch's U(-1/sqrt(in), 1/sqrt(in)); "normal" is N(0, std^2); the xavier,
    kaiming and orthogonal initialisers take their gain from ``activation`` (kaiming: relu's when
    None, the others 1). ``seed``: an int, an np.random.Generator, or None for ``fg.manual_seed``.

    >>> import fastgrad as fg, numpy as np
    >>> w = fg.nn.make_weight((4, 3), "xavier_uniform", activation="tanh", seed=0)
    >>> w.shape, bool(np.abs(w).max() <= 5 / 3 * np.sqrt(6 / (3 + 4)))
    ((4, 3), True)
    """
    if not isinstance(method, str) or method not in INITS:
        raise fail("init", f"unknown initialiser {method!r}", f"use one of {INITS}")
    std = _scale("std", std)
    shape = _init_shape(shape)
    if method == "default":
        if len(shape) < 2:
            raise fail("init", f"the default initialiser needs a shape (out, in, ...), got "
                       f"{shape}", "pass a 2-d shape, or init='normal'")
        return init.pytorch_default(shape, shape[1], seed)
    if method == "normal":
        return init.normal(shape, std, seed)
    if method in ("xavier_uniform", "xavier_normal", "orthogonal"):
        return getattr(init, method)(shape, init.gain(activation), seed=seed)
    if method in ("kaiming_uniform", "kaiming_normal"):
        return getattr(init, method)(shape, init.gain(activation or "relu"), seed=seed)
    raise fail("init", f"unknown initialiser {method!r}", f"use one of {INITS}")


# ----------------------------------------------------------------------------- layers
class Linear(Module):
    """y = x W^T + b, W of shape (out_features, in_features), as torch.nn.Linear."""

    def __init__(self, in_features, out_features, bias=True, init="default", activation=None,
                 std=0.01, seed=None, dtype=None):
        super().__init__()
        in_features, out_features = layer_sizes("Linear", in_features=in_features,
                                                out_features=out_features)
        dtype = dtype_arg("Linear", dtype, floats_only=True)
        guard_weights("Linear", [(out_features, in_features)] + ([(out_features,)] if bias else []),
                      dtype)
        rng = _rng(seed, "Linear")
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(
            make_weight((out_features, in_features), init, activation, std, rng).astype(dtype))
        if bias:
            b = init_default_bias(out_features, in_features, rng) if init == "default" \
                else np.zeros(out_features)
            self.bias = Parameter(np.asarray(b).astype(dtype))
        else:
            self.bias = None

    def forward(self, x):
        return functional.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


def init_default_bias(out_features, in_features, rng):
    """Linear's default bias, as PyTorch: (out_features,) draws of U(-1/sqrt(in), 1/sqrt(in)).

    >>> import fastgrad as fg, numpy as np
    >>> b = fg.nn.init_default_bias(4, 16, np.random.default_rng(0))
    >>> b.shape, bool(np.abs(b).max() <= 1 / np.sqrt(16))
    ((4,), True)
    """
    return init.pytorch_default((out_features,), in_features, rng)


class Activation(Module):
    """A Module applying the elementwise activation ``name``; ``kwargs`` go to the function.

    ``name`` is a key of ``fg.nn.functional.ACTIVATIONS`` (relu, tanh, sigmoid, leaky_relu,
    softplus, gelu, silu, ...). The output has the input's shape. ``fg.nn.ReLU`` and its
    siblings are its subclasses, PyTorch's activation modules.

    >>> import fastgrad as fg
    >>> act = fg.nn.Activation("leaky_relu", negative_slope=0.1)
    >>> act
    Activation(leaky_relu)
    >>> act(fg.tensor([-1.0, 2.0])).numpy()
    array([-0.1,  2. ])
    """

    def __init__(self, name, **kwargs):
        super().__init__()
        if name not in functional.ACTIVATIONS:
            raise fail("activation", f"unknown activation {name!r}",
                       f"use one of {sorted(functional.ACTIVATIONS)}")
        self.name, self.kwargs = name, kwargs

    def forward(self, x):
        return functional.ACTIVATIONS[self.name](x, **self.kwargs)

    def extra_repr(self):
        if type(self) is Activation:
            return self.name
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class ReLU(Activation):
    """max(x, 0), as torch.nn.ReLU; output shape = input shape.

    >>> import fastgrad as fg
    >>> fg.nn.ReLU()(fg.tensor([-1.0, 2.0])).numpy()
    array([0., 2.])
    >>> isinstance(fg.nn.ReLU(), fg.nn.ReLU), fg.nn.ReLU()
    (True, ReLU())
    """

    def __init__(self):
        super().__init__("relu")


class Tanh(Activation):
    """tanh(x), as torch.nn.Tanh; output shape = input shape.

    >>> import fastgrad as fg
    >>> fg.nn.Tanh()(fg.tensor([0.0, 1.0])).numpy().round(4)
    array([0.    , 0.7616])
    """

    def __init__(self):
        super().__init__("tanh")


class Sigmoid(Activation):
    """1 / (1 + exp(-x)), as torch.nn.Sigmoid; same shape out.

    >>> import fastgrad as fg
    >>> fg.nn.Sigmoid()(fg.tensor([0.0])).numpy()
    array([0.5])
    """

    def __init__(self):
        super().__init__("sigmoid")


class LeakyReLU(Activation):
    """x if x > 0 else negative_slope * x, as torch.nn.LeakyReLU.

    >>> import fastgrad as fg
    >>> fg.nn.LeakyReLU(0.1)(fg.tensor([-1.0, 2.0])).numpy()
    array([-0.1,  2. ])
    """

    def __init__(self, negative_slope=0.01):
        super().__init__("leaky_relu", negative_slope=negative_slope)


class Softplus(Activation):
    """log(1 + exp(beta x)) / beta (x where beta x > threshold), as torch.nn.Softplus.

    >>> import fastgrad as fg
    >>> fg.nn.Softplus()(fg.tensor([0.0])).numpy().round(4)
    array([0.6931])
    """

    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__("softplus", beta=beta, threshold=threshold)


class Identity(Activation):
    """Its input unchanged, as torch.nn.Identity.

    >>> import fastgrad as fg
    >>> fg.nn.Identity()(fg.tensor([-1.0, 2.0])).numpy()
    array([-1.,  2.])
    """

    def __init__(self):
        super().__init__("identity")


class GELU(Activation):
    """x Phi(x) (``approximate="tanh"``: PyTorch's tanh approximation), as torch.nn.GELU."""

    def __init__(self, approximate="none"):
        super().__init__("gelu", approximate=approximate)


class SiLU(Activation):
    """x sigmoid(x), as torch.nn.SiLU."""

    def __init__(self):
        super().__init__("silu")


class ELU(Activation):
    """x if x > 0 else alpha (exp(x) - 1), as torch.nn.ELU."""

    def __init__(self, alpha=1.0):
        super().__init__("elu", alpha=alpha)


class SELU(Activation):
    """The self-normalising ELU, as torch.nn.SELU."""

    def __init__(self):
        super().__init__("selu")


class Mish(Activation):
    """x tanh(softplus(x)), as torch.nn.Mish."""

    def __init__(self):
        super().__init__("mish")


class Hardswish(Activation):
    """x relu6(x + 3) / 6, as torch.nn.Hardswish."""

    def __init__(self):
        super().__init__("hardswish")


class ReLU6(Activation):
    """min(max(x, 0), 6), as torch.nn.ReLU6."""

    def __init__(self):
        super().__init__("relu6")


class LogSigmoid(Activation):
    """log(sigmoid(x)), as torch.nn.LogSigmoid."""

    def __init__(self):
        super().__init__("logsigmoid")


class _Conv(Module):
    """Conv1d / Conv2d: weight (out, in / groups, *kernel) and bias (out,) drawn as PyTorch's
    (uniform within 1 / sqrt(fan_in))."""

    dims = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, seed=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        cin, cout, groups = layer_sizes(name, in_channels=in_channels,
                                        out_channels=out_channels, groups=groups)
        if cin % groups or cout % groups:
            raise fail(name, f"{cin} in and {cout} out channels for {groups} groups",
                       "pass channel counts that divide by groups")
        kernel = int_tuple(name, "kernel_size", kernel_size, minimum=1)
        kernel = kernel * self.dims if len(kernel) == 1 else kernel
        if len(kernel) != self.dims:
            raise fail(name, f"kernel_size {kernel_size!r}", f"pass an int or {self.dims} ints")
        dtype = dtype_arg(name, dtype, floats_only=True)
        shape = (cout, cin // groups, *kernel)
        guard_weights(name, [shape, (cout,)], dtype)
        rng, fan_in = _rng(seed, name), cin // groups * math.prod(kernel)
        self.weight = Parameter(init.pytorch_default(shape, fan_in, rng).astype(dtype))
        self.bias = Parameter(init.pytorch_default((cout,), fan_in, rng).astype(dtype)) \
            if bias else None
        self.in_channels, self.out_channels, self.kernel_size = cin, cout, kernel
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x):
        conv = functional.conv2d if self.dims == 2 else functional.conv1d
        return conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                    self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")


class Conv2d(_Conv):
    """A 2-d convolution over (N, C, H, W), as torch.nn.Conv2d (stride, padding, dilation,
    groups; PyTorch's weight layout and init).

    >>> import fastgrad as fg, numpy as np
    >>> fg.nn.Conv2d(1, 4, 3, padding=1, seed=0)(np.ones((2, 1, 8, 8))).shape
    (2, 4, 8, 8)
    """

    dims = 2


class Conv1d(_Conv):
    """A 1-d convolution over (N, C, L), as torch.nn.Conv1d."""

    dims = 1


class MaxPool2d(Module):
    """The largest value of each window, as torch.nn.MaxPool2d."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = (kernel_size, stride,
                                                                      padding, dilation)

    def forward(self, x):
        return functional.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                     self.dilation)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class AvgPool2d(Module):
    """The mean of each window, as torch.nn.AvgPool2d."""

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.count_include_pad = count_include_pad

    def forward(self, x):
        return functional.avg_pool2d(x, self.kernel_size, self.stride, self.padding,
                                     count_include_pad=self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class Flatten(Module):
    """Dims ``start_dim`` to ``end_dim`` merged into one, as torch.nn.Flatten (from dim 1: a
    batch of images (N, C, H, W) becomes (N, C H W))."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return as_tensor(x).flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Embedding(Module):
    """A lookup table, as torch.nn.Embedding: ``weight`` (num_embeddings, embedding_dim) drawn
    from N(0, 1); integer indices (...) give rows (..., embedding_dim). The row
    ``padding_idx`` starts at zero and gets no gradient. Indices may be the inputs of a
    compiled function or of ``fg.scan``.

    >>> import fastgrad as fg, numpy as np
    >>> emb = fg.nn.Embedding(10, 3, seed=0)
    >>> emb(np.array([[1, 2], [3, 9]])).shape
    (2, 2, 3)
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, seed=None, dtype=None):
        super().__init__()
        n, d = layer_sizes("Embedding", num_embeddings=num_embeddings,
                           embedding_dim=embedding_dim)
        dtype = dtype_arg("Embedding", dtype, floats_only=True)
        guard_weights("Embedding", [(n, d)], dtype)
        if padding_idx is not None:
            if isinstance(padding_idx, (bool, np.bool_)) or not isinstance(
                    padding_idx, (int, np.integer)) or not -n <= padding_idx < n:
                raise fail("Embedding", f"padding_idx {padding_idx} for {n} embeddings",
                           f"pass an index in [{-n}, {n - 1}]")
            padding_idx %= n
        weight = _rng(seed, "Embedding").standard_normal((n, d))
        if padding_idx is not None:
            weight[padding_idx] = 0.0
        self.num_embeddings, self.embedding_dim, self.padding_idx = n, d, padding_idx
        self.weight = Parameter(weight.astype(dtype))

    def forward(self, indices):
        return functional.embedding(indices, self.weight, self.padding_idx)

    def extra_repr(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class LayerNorm(Module):
    """(x - mean) / sqrt(var + eps) over the last dims ``normalized_shape``, then times
    ``weight`` plus ``bias`` (ones and zeros at first), as torch.nn.LayerNorm."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=None):
        super().__init__()
        shape = int_tuple("LayerNorm", "normalized_shape", normalized_shape, minimum=1)
        dtype = dtype_arg("LayerNorm", dtype, floats_only=True)
        guard_weights("LayerNorm", [shape, shape], dtype)
        self.normalized_shape, self.eps = shape, real("LayerNorm", "eps", eps)
        self.weight = Parameter(np.ones(shape, dtype)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(shape, dtype)) if elementwise_affine and bias else None

    def forward(self, x):
        return functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class _BatchNorm(Module):
    """Batch normalisation over the channel dim 1 (torch.nn.BatchNorm1d / 2d): while training,
    (x - batch mean) / sqrt(batch variance + eps) per channel, the running statistics moved
    toward the batch's (``momentum``; None: their cumulative average), and in ``eval()`` the
    running statistics instead; then times ``weight`` plus ``bias``. The running statistics are
    buffers (``state_dict`` holds them). Training updates them eagerly, from each batch's
    values: inside fg.compile or fg.scan that would be done once, at trace time, and it is
    refused (train eagerly, or compile the model in ``eval()``)."""

    dims = ()  # the accepted input ranks

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=None):
        super().__init__()
        name = type(self).__name__
        n = int_tuple(name, "num_features", (num_features,), minimum=1)[0]
        dtype = dtype_arg(name, dtype, floats_only=True)
        guard_weights(name, [(n,)] * 4, dtype)
        self.num_features, self.eps = n, real(name, "eps", eps)
        if momentum is not None and not 0.0 <= real(name, "momentum", momentum) <= 1.0:
            raise fail(name, f"momentum={momentum}", "pass a number in [0, 1] or None")
        self.momentum, self.affine = momentum, bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.weight = Parameter(np.ones(n, dtype)) if affine else None
        self.bias = Parameter(np.zeros(n, dtype)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(n, dtype))
            self.register_buffer("running_var", np.ones(n, dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def forward(self, x):
        name = type(self).__name__
        x = as_tensor(x)
        if x.ndim not in self.dims or x.shape[1] != self.num_features:
            raise fail(name, f"input of shape {tuple(x.shape)}", "pass (N, C" +
                       ", L" * (self.dims[-1] == 3) + ", H, W" * (self.dims[-1] == 4) +
                       f") with C = {self.num_features}")
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if self.training or not self.track_running_stats:
            count = x.size // self.num_features
            if count < 2 and self.training:
                raise fail(name, f"one value per channel in a batch of shape {tuple(x.shape)}",
                           "train with batches of more than one value per channel")
            mean = x.mean(axes, keepdim=True)
            var = ((x - mean) ** 2).mean(axes, keepdim=True)
            if self.training and self.track_running_stats:
                self._track(mean, var, count)
        else:
            mean = self.running_mean.reshape(shape)
            var = self.running_var.reshape(shape)
        y = (x - mean) / (var + self.eps).sqrt()
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y

    def _track(self, mean, var, count):
        if is_replayed():
            raise fail(type(self).__name__, "training inside fg.compile or fg.scan would "
                       "update the running statistics once, at trace time",
                       "train it eagerly, or call model.eval() before compiling")
        done = self.num_batches_tracked.numpy()
        done += 1
        m = 1.0 / float(done) if self.momentum is None else self.momentum
        unbiased = var.numpy().reshape(-1) * (count / (count - 1))
        for buffer, batch in ((self.running_mean, mean.numpy().reshape(-1)),
                              (self.running_var, unbiased)):
            values = buffer.numpy()
            values[...] = (1.0 - m) * values + m * batch

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs over all but the channel dim, as
    torch.nn.BatchNorm1d (see ``_BatchNorm``).

    >>> import fastgrad as fg, numpy as np
    >>> bn = fg.nn.BatchNorm1d(2)
    >>> y = bn(np.array([[1.0, 10.0], [3.0, 30.0]]))
    >>> y.numpy().round(3), bn.running_mean.numpy()
    (array([[-1., -1.],
           [ 1.,  1.]]), array([0.2, 2. ]))
    >>> list(bn.state_dict())
    ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    """

    dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs over all but the channel dim, as
    torch.nn.BatchNorm2d (see ``_BatchNorm``)."""

    dims = (4,)


class Dropout(Module):
    """Each element zeroed with probability ``p`` and the rest scaled by 1 / (1 - p) while
    training; the identity in ``eval()``, as torch.nn.Dropout. The masks are drawn from
    ``seed`` (or from ``fg.manual_seed``'s generator). Eager only while training: inside
    fg.compile a mask would be drawn once, at trace time, and it is refused."""

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        p = real("Dropout", "p", p)
        if not 0.0 <= p <= 1.0:
            raise fail("Dropout", f"p={p}", "pass a probability in [0, 1]")
        self.p = p
        self.rng = np.random.default_rng(_rng(seed, "Dropout").integers(2**63))

    def forward(self, x):
        return functional.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self):
        return f"p={self.p}"


class Sequential(Module):
    """Modules applied in order, each to the previous one's output, as torch.nn.Sequential.

    They are registered under the names "0", "1", ...; ``model[i]`` and ``len(model)`` work.

    >>> import fastgrad as fg, numpy as np
    >>> model = fg.nn.Sequential(fg.nn.Linear(3, 2, seed=0), fg.nn.Tanh())
    >>> model(np.ones((4, 3))).shape  # (batch, 3) -> (batch, 2)
    (4, 2)
    >>> len(model), model[1]
    (2, Tanh())
    >>> [name for name, _ in model.named_parameters()]
    ['0.weight', '0.bias']
    """

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)


class MLP(Module):
    """A multilayer perceptron: Linear layers of ``sizes`` with ``activation`` between them.

    ``bias=False`` gives the lecture's unbiased MLP y = g(W2 f(W1 x)). ``init`` is one of
    default (PyTorch's), normal (``std``), xavier_uniform/normal, kaiming_uniform/normal,
    orthogonal; gains follow the activation.
    """

    def __init__(self, sizes, activation="relu", bias=True, init="default", std=0.01,
                 out_activation=None, seed=None, dtype=None):
        super().__init__()
        if isinstance(sizes, (int, np.integer)) or len(int_tuple("MLP", "sizes", sizes)) < 2:
            raise fail("MLP", f"needs at least input and output sizes, got {sizes}",
                       "pass e.g. [784, 128, 10]")
        for what, act in (("activation", activation), ("out_activation", out_activation)):
            if not (isinstance(act, str) and act in functional.ACTIVATIONS) and not (
                    act is None and what == "out_activation"):
                raise fail("MLP", f"unknown {what} {act!r}",
                           f"use one of {sorted(functional.ACTIVATIONS)}")
        rng = _rng(seed, "MLP")
        self.layers = Sequential(*[
            Linear(a, b, bias=bias, init=init, activation=activation, std=std, seed=rng,
                   dtype=dtype) for a, b in zip(sizes[:-1], sizes[1:])])
        self.activation = activation
        self.out_activation = out_activation
        self.sizes = list(sizes)
        if activation not in functional.ACTIVATIONS:
            raise fail("MLP", f"unknown activation {activation!r}",
                       f"use one of {sorted(functional.ACTIVATIONS)}")

    def forward(self, x, return_hidden=False):
        act = functional.ACTIVATIONS[self.activation]
        hidden = []
        n = len(self.layers)
        fused = self.activation in LINEAR_ACTIVATIONS
        for i, layer in enumerate(self.layers):
            if i < n - 1 and fused and layer.bias is not None:  # one LINEAR_ACT row per layer
                x = functional.linear_act(x, layer.weight, layer.bias, self.activation)
                hidden.append(x)
                continue
            x = layer(x)
            if i < n - 1:
                x = act(x)
                hidden.append(x)
            elif self.out_activation:
                x = functional.ACTIVATIONS[self.out_activation](x)
        return (x, hidden) if return_hidden else x

    def extra_repr(self):
        return f"sizes={self.sizes}, activation={self.activation!r}"


# ----------------------------------------------------------------------------- utils
class utils:  # noqa: N801 - spelled as torch.nn.utils
    """Gradient clipping, spelled as torch.nn.utils: these change each ``p.grad`` in place.

    >>> import fastgrad as fg, numpy as np
    >>> p = fg.nn.Parameter([0.0, 0.0])
    >>> p.grad = np.array([3.0, 4.0])
    >>> fg.nn.utils.clip_grad_norm_([p], max_norm=1.0)  # returns the norm before clipping
    5.0
    >>> p.grad.round(3)
    array([0.6, 0.8])
    """

    @staticmethod
    def clip_grad_norm_(parameters, max_norm):
        """Scale grads by max_norm / (total_norm + 1e-6) when that is < 1; return total_norm.
        A NaN total_norm (a NaN gradient) makes every gradient NaN, as in PyTorch."""
        max_norm = _bound("clip_grad_norm_", "max_norm", max_norm)
        grads = [p.grad for p in parameters if p.grad is not None]
        total = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads))
        coef = max_norm / (total + 1e-6)
        if not coef >= 1:  # below 1, or NaN
            for g in grads:
                g *= coef
        return total

    @staticmethod
    def clip_grad_value_(parameters, clip_value):
        """Clip every gradient elementwise into [-clip_value, clip_value], in place.

        Parameters whose ``.grad`` is None are skipped; returns None.

        >>> import fastgrad as fg, numpy as np
        >>> p = fg.nn.Parameter([0.0, 0.0, 0.0])
        >>> p.grad = np.array([-3.0, 0.5, 2.0])
        >>> fg.nn.utils.clip_grad_value_([p], 1.0)
        >>> p.grad
        array([-1. ,  0.5,  1. ])
        """
        clip_value = _bound("clip_grad_value_", "clip_value", clip_value)
        for p in parameters:
            if p.grad is not None:
                np.clip(p.grad, -clip_value, clip_value, out=p.grad)


# ----------------------------------------------------------------------------- recurrent layers
class _Recurrent(Module):
    """Shared by RNN, LSTM, GRU: PyTorch's parameter names (``weight_ih_l{k}``, ...,
    ``_reverse`` for the second direction), layout, argument order and default init
    U(-1/sqrt(H), 1/sqrt(H)); input (T, B, I) or (B, T, I) with batch_first, or unbatched (T, I).

    forward(xs, h0=None) -> (outputs (T, B, D·H), final state). Each layer and direction is one
    ``fg.scan``: the step is recorded once, and the input projection x W_ih^T for all T steps
    is one matrix product outside the loop. With ``num_layers`` > 1 each layer reads the
    outputs of the one below (``dropout`` on them while training, eagerly: as
    ``nn.Dropout``); with ``bidirectional`` a second scan runs over the reversed sequence and
    the outputs are concatenated (forward, then reverse), as PyTorch's. The final state of one
    layer in one direction is (B, H) (PyTorch: (1, B, H); pass h0 as (1, B, H) to get that
    shape back); with several it is (num_layers · D, B, H), as PyTorch's. With ``checkpoint``
    ("sqrt" keeps ~sqrt(T) states, fg.Binomial(slots=s) keeps s carries; see fg.scan) the
    projection moves inside the loop, so no buffer grows with T but the input itself; with
    ``stack_outputs=False`` the last layer's outputs are not kept either (returned as None):
    this is how a 10^7-step unroll fits in memory. To train on a stream in windows
    (truncated BPTT), pass the layer to fg.truncated_bptt.
    """

    gates = 1
    fold_hh_bias = False  # b_hh can join b_ih outside the loop only where it is added to x W_ih

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, checkpoint=None, seed=None, dtype=None,
                 stack_outputs=True):
        super().__init__()
        self.stack_outputs = stack_outputs
        op = type(self).__name__
        input_size, hidden_size, num_layers = layer_sizes(
            op, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        dropout = real(op, "dropout", dropout)
        if not 0.0 <= dropout <= 1.0:
            raise fail(op, f"dropout={dropout}", "pass a probability in [0, 1]")
        dtype = dtype_arg(op, dtype, floats_only=True)
        directions = 2 if bidirectional else 1
        bound = 1.0 / math.sqrt(hidden_size)
        g = self.gates * hidden_size
        sizes = [input_size] + [hidden_size * directions] * (num_layers - 1)
        per_cell = [(g, hidden_size)] + [(g,)] * (2 if bias else 0)
        guard_weights(op, [shape for n_in in sizes for _ in range(directions)
                           for shape in [(g, n_in)] + per_cell], dtype)
        rng = _rng(seed, op)

        def uniform(*shape):
            return Parameter(rng.uniform(-bound, bound, shape).astype(dtype))

        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bidirectional, self.dropout = bool(bidirectional), dropout
        self.batch_first, self.checkpoint = batch_first, checkpoint
        for layer, n_in in enumerate(sizes):
            for sfx in ("", "_reverse")[:directions]:
                name = f"l{layer}{sfx}"
                setattr(self, "weight_ih_" + name, uniform(g, n_in))
                setattr(self, "weight_hh_" + name, uniform(g, hidden_size))
                setattr(self, "bias_ih_" + name, uniform(g) if bias else None)
                setattr(self, "bias_hh_" + name, uniform(g) if bias else None)
        if dropout and num_layers > 1:
            self.rng = np.random.default_rng(rng.integers(2**63))

    # ------------------------------------------------------------------ one layer, one direction
    def _cell(self, layer, reverse):
        """(W_ih, W_hh, b_ih, b_hh) of one layer and direction."""
        name = f"l{layer}" + ("_reverse" if reverse else "")
        return tuple(getattr(self, f"{w}_{name}")
                     for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def _hh_bias(self, cell):
        """b_hh inside the loop, unless it was folded into the projection outside."""
        return None if self.fold_hh_bias and self.checkpoint is None else cell[3]

    def _project(self, x, cell):
        """The input projection of one step when it runs inside the loop, else x itself."""
        if self.checkpoint is None:
            return x
        return functional.linear(x, cell[0], cell[2])

    def _layer(self, seq, cell, init, reverse, stack):
        """(outputs (T, B, H) or None, final carry) of one layer in one direction over ``seq``."""
        if reverse:
            seq = seq.flip(0)
        T, B, n_in = seq.shape
        if self.checkpoint is None:  # project outside the loop: one product for all T steps
            bias = cell[2]
            if self.fold_hh_bias and bias is not None:  # one bias add outside the loop, not T
                bias = bias + cell[3]
            seq = functional.linear(seq.reshape(T * B, n_in), cell[0], bias).reshape(
                T, B, self.gates * self.hidden_size)
        out = scan(self._step(cell), init, seq, checkpoint=self.checkpoint, stack=stack)
        hs, final = out if stack else (None, out)
        return (hs.flip(0) if reverse and hs is not None else hs), final

    def _step(self, cell):
        raise NotImplementedError

    # ------------------------------------------------------------------ the whole stack
    def _sequence(self, xs):
        xs = as_tensor(xs)
        unbatched = xs.ndim == 2
        if unbatched:
            xs = xs.reshape(xs.shape[0], 1, xs.shape[1])
        elif self.batch_first:
            xs = xs.transpose(1, 0, 2)
        if xs.ndim != 3 or xs.shape[2] != self.input_size:
            raise fail(type(self).__name__, f"expects input (T, B, {self.input_size}) "
                       f"{'(batch_first: (B, T, I))' if self.batch_first else ''}, got "
                       f"{tuple(xs.shape)}", "reshape the input sequence")
        return xs, unbatched

    def _zeros(self, B):
        return zeros(B, self.hidden_size, dtype=self.weight_hh_l0.dtype)

    def _initial(self, state, B, unbatched):
        """Per layer and direction, the initial carry; and whether the caller gave the states
        stacked (PyTorch's (num_layers · D, B, H))."""
        count = self.num_layers * (1 + self.bidirectional)
        parts = 2 if self.gates == 4 else 1  # an LSTM's carry is (h, c)
        if state is None:
            carries = [self._zeros(B) for _ in range(count * parts)]
            stacked = count > 1
        else:
            given = list(state) if parts == 2 else [state]
            if parts == 2 and len(given) != 2:
                raise fail(type(self).__name__, f"state of {len(given)} tensors",
                           "pass (h0, c0)")
            given = [as_tensor(t) for t in given]
            want = (B, self.hidden_size)
            stacked = count > 1 or given[0].ndim == 3 - unbatched
            carries = []
            for t in given:
                shape = ((count,) if stacked else ()) + ((self.hidden_size,) if unbatched
                                                         else want)
                if tuple(t.shape) != shape:
                    raise fail(type(self).__name__, f"initial state of shape {tuple(t.shape)}",
                               f"pass {shape} (num_layers · directions = {count})")
                t = t.reshape((count,) + want) if stacked else t.reshape(want)
                carries += [t[k] for k in range(count)] if stacked else [t]
        if parts == 2:
            return [(carries[k], carries[count + k]) for k in range(count)], stacked
        return carries, stacked

    def forward(self, xs, state=None):
        seq, unbatched = self._sequence(xs)
        B = seq.shape[1]
        inits, stacked = self._initial(state, B, unbatched)
        directions = 1 + self.bidirectional
        finals = []
        for layer in range(self.num_layers):
            last = layer == self.num_layers - 1
            outs = []
            for d in range(directions):
                hs, final = self._layer(seq, self._cell(layer, d == 1),
                                        inits[layer * directions + d], d == 1,
                                        not last or self.stack_outputs)
                outs.append(hs)
                finals.append(final)
            seq = outs[0] if directions == 1 or outs[0] is None else concatenate(outs, axis=2)
            if not last and self.dropout and self.training:
                seq = functional.dropout(seq, self.dropout, True, self.rng)
        return self._outputs(seq, finals, stacked, unbatched)

    def _outputs(self, hs, finals, stacked, unbatched):
        width = self.hidden_size * (1 + self.bidirectional)
        if hs is None:
            pass
        elif unbatched:
            hs = hs.reshape(hs.shape[0], width)
        elif self.batch_first:
            hs = hs.transpose(1, 0, 2)
        shape = (self.hidden_size,) if unbatched else tuple(finals[0][0].shape if isinstance(
            finals[0], tuple) else finals[0].shape)

        def gather(ts):
            if not stacked:  # as recorded; unbatched, without its batch dim of one
                return ts[0].reshape(shape) if unbatched else ts[0]
            return stack(ts).reshape((len(ts),) + shape)

        if isinstance(finals[0], tuple):  # an LSTM: (h, c)
            return hs, (gather([f[0] for f in finals]), gather([f[1] for f in finals]))
        return hs, gather(finals)

    def extra_repr(self):
        extra = "".join(f", {k}={v}" for k, v, default in (
            ("num_layers", self.num_layers, 1), ("dropout", self.dropout, 0.0),
            ("bidirectional", self.bidirectional, False)) if v != default)
        return f"{self.input_size}, {self.hidden_size}{extra}"


class RNN(_Recurrent):
    """Elman RNN, as torch.nn.RNN: h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh).

    >>> import fastgrad as fg, numpy as np
    >>> rnn = fg.nn.RNN(input_size=3, hidden_size=4, seed=0)
    >>> hs, h_T = rnn(np.ones((5, 2, 3)))
    >>> hs.shape, h_T.shape
    ((5, 2, 4), (2, 4))
    >>> deep = fg.nn.RNN(3, 4, num_layers=2, bidirectional=True, seed=0)
    >>> hs, h_n = deep(np.ones((5, 2, 3)))
    >>> hs.shape, h_n.shape
    ((5, 2, 8), (4, 2, 4))
    """

    fold_hh_bias = True

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, checkpoint=None,
                 seed=None, dtype=None, stack_outputs=True):
        if nonlinearity not in ("tanh", "relu"):
            raise fail("RNN", f"unknown nonlinearity {nonlinearity!r}", "use 'tanh' or 'relu'")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, checkpoint=checkpoint, seed=seed, dtype=dtype,
                         stack_outputs=stack_outputs)
        self.nonlinearity = nonlinearity

    def _step(self, cell):
        W, b = cell[1], self._hh_bias(cell)

        def step(h, xp):  # one LINEAR_ACT row: act(h W_hh^T + (x_t W_ih^T + biases))
            c = self._project(xp, cell)
            return functional.linear_act(h, W, c if b is None else c + b, self.nonlinearity)

        return step


class LSTM(_Recurrent):
    """LSTM, as torch.nn.LSTM (gates i, f, g, o in that order in the 4H rows of the weights):
    c_t = f * c_{t-1} + i * g, h_t = o * tanh(c_t). forward(xs, (h0, c0)) -> (hs, (h_T, c_T))."""

    gates = 4
    fold_hh_bias = True

    def _step(self, cell):
        H, W, b = self.hidden_size, cell[1], self._hh_bias(cell)

        def step(carry, xp):
            h, c = carry
            z = self._project(xp, cell) + functional.linear(h, W, b)
            i, f = z[:, 0:H].sigmoid(), z[:, H : 2 * H].sigmoid()
            g, o = z[:, 2 * H : 3 * H].tanh(), z[:, 3 * H : 4 * H].sigmoid()
            c = f * c + i * g
            return o * c.tanh(), c

        return step


class GRU(_Recurrent):
    """GRU, as torch.nn.GRU (gates r, z, n): n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)),
    h_t = (1 - z) * n + z * h_{t-1}."""

    gates = 3

    def _step(self, cell):
        H, W, b = self.hidden_size, cell[1], cell[3]

        def step(h, xp):
            xp = self._project(xp, cell)
            hp = functional.linear(h, W, b)
            r = (xp[:, 0:H] + hp[:, 0:H]).sigmoid()
            z = (xp[:, H : 2 * H] + hp[:, H : 2 * H]).sigmoid()
            n = (xp[:, 2 * H :] + r * hp[:, 2 * H :]).tanh()
            return n + z * (h - n)

        return step
