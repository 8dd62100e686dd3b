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
import numbers
import weakref
from collections.abc import Mapping

import numpy as np

from ..core.errors import fail
from ..kernels import optim as _k
from ..frontend.inputs import guard_new
from ..frontend.tensor import Tensor


# ----------------------------------------------------------------------------- option checks
# One checker per kind of option: the constructor, ``options`` assignments, ``lr = ...``,
# ``load_state_dict`` and the first step after an in-place edit of ``opt.options`` all run the
# same ``_check_options``, so a state that the constructor refuses can never reach the kernel.
_MAX_STEPS = 2**62  # the kernels take t as int64 and compute beta**t; far beyond any run


def _is_real(value) -> bool:
    """A real number: Python's or NumPy's (a 0-d integer or float array too, as a sweep may
    pass), never a bool."""
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "iuf"
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _number(low=0.0, high=math.inf, *, high_open=False, text="a finite number >= 0"):
    """A checker: returns None when ``value`` is a finite real in [low, high] (or [low, high)),
    else the requirement it broke."""

    def check(value):
        if not _is_real(value):
            return text
        v = float(value)
        if not math.isfinite(v) or v < low or v > high or (high_open and v >= high):
            return text
        return None

    return check


def _flag(value):
    return None if isinstance(value, (bool, np.bool_)) else "True or False"


def _betas(value):
    beta = _number(0.0, 1.0, high_open=True)
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and beta(value[0]) is None and beta(value[1]) is None):
        return None
    return "a pair (beta1, beta2) of numbers in [0, 1)"


_NONNEG = _number()
_REAL = _number(-math.inf, math.inf, text="a finite number")
_UNIT = _number(0.0, 1.0, text="a number in [0, 1]")


def _check_step_count(owner: str, value) -> int:
    """``t``, the number of steps taken: an integer in [0, 2**62)."""
    if (not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_))
            or not 0 <= value < _MAX_STEPS):
        raise fail(owner, f"t (the number of steps taken) must be an integer >= 0, got "
                   f"{value!r}", "pass the 't' of a state_dict(), or 0 for a fresh run")
    return int(value)



def _check_state_fields(state, where: str, name: str, fields: set, source: str, kind: str):
    """Refuse ``state`` unless it is a dict with exactly ``fields`` and ``type`` == ``name``
    (the checks every ``load_state_dict`` starts with). ``source`` names what made it
    (``opt.state_dict()``), ``kind`` what loads it ("optimizer", "scheduler")."""
    if not isinstance(state, Mapping):
        raise fail(where, f"expected the dict that state_dict() returns, got "
                   f"{type(state).__name__}", f"pass {source} or fg.load(path)[key]")
    missing, unknown = fields - set(state), set(state) - fields
    if missing or unknown:
        parts = ([f"missing fields {sorted(missing)}"] if missing else []) + (
            [f"unknown fields {sorted(map(str, unknown))}"] if unknown else [])
        raise fail(where, "the state has " + " and ".join(parts), "pass what state_dict() returned")
    if state["type"] != name:
        raise fail(where, f"state of a {state['type']} given to a {name}",
                   f"load it into the same {kind} type")


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


# id(parameter) -> the optimizer whose ``flat`` buffer the parameter's values are a view of
_OWNERS: "weakref.WeakValueDictionary[int, Optimizer]" = weakref.WeakValueDictionary()


def _take_ownership(opt) -> None:
    """Record ``opt`` as the owner of its parameters' memory, and mark the optimizer that owned
    one of them before as superseded.

    Why: an optimizer makes each parameter a view of its own flat buffer, so a second optimizer
    over the same parameter re-points it, and the first one's updates would silently stop
    reaching the model. PyTorch users may expect both to work; refusing the first at its next
    update is the honest choice (``_superseded_error`` says what to do)."""
    for i, p in enumerate(opt.params):
        old = _OWNERS.get(id(p))
        # ``is`` check: an id can be reused by a new tensor after the old one is collected
        if (old is not None and old is not opt and old._superseded is None
                and any(q is p for q in old.params)):
            old._superseded = (next(j for j, q in enumerate(old.params) if q is p),
                               type(opt).__name__)
        _OWNERS[id(p)] = opt


def _superseded_error(opt):
    index, newer = opt._superseded
    name = type(opt).__name__
    return fail(f"{name}.step", f"parameter {index} of this optimizer was taken over by a {newer} "
                "created later over the same parameter (an optimizer keeps its parameters' "
                "values in its own flat buffer, so this one's updates would no longer reach the "
                "model)", "use one optimizer per parameter: build one optimizer over all of them, "
                "or create this optimizer again after the other if it should train them")


class Optimizer:
    """Base class: flat parameter/gradient buffers, state buffers, step counter.

    ``flat``, ``flat_grad`` and the three ``state`` buffers are the rows of one block
    (``buffers``), fixed for the optimizer's life (read-only attributes; write into them):
    parameters are views of ``flat``, and a compiled step passes the block to its native
    entry.
    """

    kind = -1
    defaults: dict = {}
    # option name -> checker (None when valid, else the requirement): see ``_check_options``
    option_checks: dict = {"lr": _NONNEG}

    def __init__(self, params, *args, **options):
        name = type(self).__name__
        if args:  # PyTorch users write SGD(params, 0.1): lr is the one positional option
            if len(args) > 1 or "lr" in options:
                given = f"{len(args)} positional options" + (" and lr=" if "lr" in options else "")
                raise fail(name, f"got {given}", "pass lr positionally or by name, and every "
                           "other option by name (momentum=0.9)")
            options["lr"] = args[0]
        if isinstance(params, (Tensor, str, bytes)) or not hasattr(params, "__iter__"):
            raise fail(name, f"params must be an iterable of parameters, got "
                       f"{type(params).__name__}", "pass model.parameters() or a list of them")
        params = list(params)
        if not params:
            raise fail(name, "got an empty parameter list",
                       "pass model.parameters() of a model that has parameters")
        for p in params:
            if not isinstance(p, Tensor) or p.tape is not None or not p.requires_grad:
                raise fail(name, "parameters must be leaf tensors with "
                           "requires_grad=True", "pass model.parameters()")
            if not p.is_leaf:  # a cast: its gradient goes to the tensor it was cast from
                raise fail(name, f"a parameter of shape {p.shape} is a cast of another tensor "
                           "(x.float() or x.astype(...)), not a leaf; as PyTorch, it cannot "
                           "be optimized", "cast the model first (model.astype(...)) and "
                           "pass its parameters")
        if len({id(p) for p in params}) != len(params):
            # each would get its own slot of ``flat`` and the parameter would view only the last
            raise fail(name, "a parameter appears more than once in params",
                       "pass each parameter once (list(dict.fromkeys(params)))")
        dtypes = {p.dtype for p in params}
        if len(dtypes) > 1:
            raise fail(type(self).__name__, f"parameters mix dtypes {sorted(map(str, dtypes))}",
                       "make every parameter one dtype (model.astype(np.float32))")
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise fail(type(self).__name__, f"unknown options {sorted(unknown)}",
                       f"use {sorted(self.defaults)}")
        self._options = Options({**self.defaults, **options})
        self._check_options(self._options, name)
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
        self._superseded = None  # (parameter index, newer optimizer's name) once one takes it
        _take_ownership(self)

    def __setstate__(self, state):
        """copy.deepcopy / pickle: ``flat``, ``flat_grad`` and ``state`` become rows of the
        copied block again, and the copied parameters views of the copied ``flat``."""
        self.__dict__.update(state)
        b = self._buffers
        self._flat, self._flat_grad, self._state = b[0], b[1], tuple(b[2:])
        for p, a, e in zip(self.params, self.offsets[:-1], self.offsets[1:]):
            p._data = self._flat[a:e].reshape(p.shape)
        _take_ownership(self)

    @property
    def options(self) -> Options:
        """The hyper-parameters by name (lr, momentum, betas, ...); change them in place or
        assign a new dict."""
        return self._options

    @options.setter
    def options(self, value):
        if not isinstance(value, Mapping):
            raise fail(f"{type(self).__name__}.options", f"expected a dict, got "
                       f"{type(value).__name__}",
                       f"assign a dict with keys {sorted(self.defaults)}")
        value = Options(value)
        self._check_options(value, f"{type(self).__name__}.options")
        self._options = value

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
        problem = self.option_checks["lr"](value)
        if problem:
            raise fail(f"{type(self).__name__}.lr", f"lr must be {problem}, got {value!r}",
                       "set a finite learning rate >= 0")
        self.options["lr"] = float(value)

    def hyper(self) -> np.ndarray:
        """The options as the float64 array the update kernel reads (rebuilt when they change).

        Every update (``step()``, a compiled step, ``fg.fit``) reads it, so it is also where an
        optimizer whose parameters another optimizer took over refuses to run."""
        if self._superseded is not None:
            raise _superseded_error(self)
        options = self._options
        if options.version != self._hyper_version or options is not self._hyper_of:
            # an in-place edit (opt.options["lr"] = ...) is checked here, at the next step
            self._check_options(options, f"{type(self).__name__}.step")
            self._hyper_version, self._hyper_of = options.version, options
            # float64 whatever the options' types (a Fraction, np.float32s, ints): the
            # compiled step's native entry reads it as float64 without checking
            self._hyper = np.ascontiguousarray(self._hyper_array(), dtype=np.float64).ravel()
        return self._hyper

    def _check_options(self, options, owner):
        """Refuse ``options`` unless it has exactly this optimizer's option names, each value
        of the right type and range (PyTorch's constructor checks, plus finiteness: a NaN or
        infinite option would silently turn every parameter into NaN)."""
        missing, unknown = set(self.defaults) - set(options), set(options) - set(self.defaults)
        if unknown:
            raise fail(owner, f"unknown options {sorted(map(str, unknown))}",
                       f"use {sorted(self.defaults)}")
        if missing:
            raise fail(owner, f"options {sorted(missing)} are missing",
                       f"give every one of {sorted(self.defaults)}")
        for key, check in self.option_checks.items():
            problem = check(options[key])
            if problem:
                raise fail(owner, f"option {key} must be {problem}, got {options[key]!r}",
                           f"pass a valid {key} (default {self.defaults[key]!r})")

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
        hyper = self.hyper()  # first: it refuses a superseded optimizer before anything changes
        for i, (p, a, b) in enumerate(zip(self.params, self.offsets[:-1], self.offsets[1:])):
            if p.grad is None:
                self.flat_grad[a:b] = 0
                continue
            g = np.asarray(p.grad)
            if g.shape != p.shape or g.dtype.kind not in "fiub":
                # a (1,) gradient would broadcast over the whole slot without this
                raise fail(f"{type(self).__name__}.step", f"parameter {i} of shape {p.shape} "
                           f"has a .grad of shape {g.shape} and dtype {g.dtype}",
                           "set .grad to a real array of the parameter's shape, or None")
            self.flat_grad[a:b] = g.ravel()
        self.t += 1
        _k.optimizer_update(self.kind, self.flat, self.flat_grad, *self.state, hyper, self.t)

    def state_dict(self) -> dict:
        """Options, step count and state buffers (NumPy arrays; exact round trip)."""
        return {"type": type(self).__name__, "options": dict(self.options), "t": self.t,
                "state": [s.copy() for s in self.state]}

    def load_state_dict(self, state: dict):
        """Restore what ``state_dict()`` returned (directly or through ``fg.save``/``fg.load``).

        Every field is checked as the constructor checks it before anything is changed, so a
        refused state leaves the optimizer as it was: the type, every option, ``t`` (an
        integer >= 0) and all three state buffers (this optimizer's dtype, one value per
        parameter element).

        >>> import fastgrad as fg, numpy as np
        >>> w = fg.nn.Parameter(np.zeros(3))
        >>> opt = fg.optim.SGD([w], lr=0.1, momentum=0.9)
        >>> opt.load_state_dict(opt.state_dict())
        """
        name = type(self).__name__
        where = f"{name}.load_state_dict"
        _check_state_fields(state, where, name, {"type", "options", "t", "state"},
                            "opt.state_dict()", "optimizer")
        if not isinstance(state["options"], Mapping):
            raise fail(where, f"options must be a dict, got {type(state['options']).__name__}",
                       "pass what state_dict() returned")
        options = dict(state["options"])
        self._check_options(options, where)
        t = _check_step_count(where, state["t"])
        buffers = state["state"]
        if not isinstance(buffers, (list, tuple)) or len(buffers) != len(self.state):
            got = (len(buffers) if isinstance(buffers, (list, tuple))
                   else f"a {type(buffers).__name__}")
            raise fail(where, f"state must be a list of {len(self.state)} buffers, got {got}",
                       "pass the complete state that state_dict() returned")
        for i, b in enumerate(buffers):
            if not isinstance(b, np.ndarray) or b.shape != self.flat.shape or b.dtype != self.dtype:
                got = (f"shape {b.shape} and dtype {b.dtype}" if isinstance(b, np.ndarray)
                       else f"a {type(b).__name__}")
                raise fail(where, f"state buffer {i} is {got}; this optimizer needs shape "
                           f"{self.flat.shape} and dtype {self.dtype}",
                           "build the same model in the same dtype first, or cast the saved "
                           "buffers with .astype")
        self.options.update(options)
        self.t = t
        for mine, theirs in zip(self.state, buffers):
            mine[...] = theirs


class SGD(Optimizer):
    """torch.optim.SGD: momentum, dampening, nesterov, weight_decay."""

    kind = _k.SGD
    defaults = dict(lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0)
    option_checks = dict(lr=_NONNEG, momentum=_NONNEG, dampening=_REAL, nesterov=_flag,
                         weight_decay=_NONNEG)

    def _check_options(self, options, owner):
        super()._check_options(options, owner)
        o = options
        if o["nesterov"] and (o["momentum"] <= 0 or o["dampening"] != 0):
            raise fail(owner, "nesterov needs momentum > 0 and dampening = 0",
                       "set momentum or drop nesterov")

    def _hyper_array(self):
        o = self.options
        return np.array([o["lr"], o["momentum"], o["dampening"], float(o["nesterov"]),
                         o["weight_decay"]])


class Adagrad(Optimizer):
    """torch.optim.Adagrad: lr_decay, weight_decay, eps (initial accumulator 0)."""

    kind = _k.ADAGRAD
    defaults = dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10)
    option_checks = dict(lr=_NONNEG, lr_decay=_NONNEG, weight_decay=_NONNEG, eps=_NONNEG)

    def _hyper_array(self):
        o = self.options
        return np.array([o["lr"], o["lr_decay"], o["weight_decay"], o["eps"]])


class RMSprop(Optimizer):
    """torch.optim.RMSprop: alpha, eps, weight_decay, momentum, centered."""

    kind = _k.RMSPROP
    defaults = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                    centered=False)
    option_checks = dict(lr=_NONNEG, alpha=_UNIT, eps=_NONNEG, weight_decay=_NONNEG,
                         momentum=_NONNEG, centered=_flag)

    def _hyper_array(self):
        o = self.options
        return np.array([o["lr"], o["alpha"], o["eps"], o["weight_decay"], o["momentum"],
                         float(o["centered"])])


class Adam(Optimizer):
    """torch.optim.Adam: betas, eps, weight_decay (L2, added to the gradient), amsgrad."""

    kind = _k.ADAM
    decoupled = False
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False)
    option_checks = dict(lr=_NONNEG, betas=_betas, eps=_NONNEG, weight_decay=_NONNEG,
                         amsgrad=_flag)

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
    """Set ``optimizer.lr`` from the epoch count; call ``step()`` once per epoch (as PyTorch).

    State, as PyTorch names it: ``last_epoch`` (steps taken, 0 when built; ``epoch`` is the
    same number), ``base_lrs`` (``[optimizer.lr]`` when built; ``base_lr`` is its one entry)
    and ``get_last_lr()``, plus each schedule's own arguments. ``state_dict()`` returns them
    and ``load_state_dict`` restores them, checked as the constructor checks them; ``fg.save``
    stores a scheduler as its state dict. Load the state into a scheduler rebuilt over the
    restored optimizer: ``base_lrs`` then comes from the state, not from the (already
    decayed) learning rate the optimizer holds.

    >>> import fastgrad as fg, numpy as np
    >>> opt = fg.optim.SGD([fg.nn.Parameter(np.zeros(2))], lr=1.0)
    >>> sched = fg.optim.StepLR(opt, step_size=1, gamma=0.5)
    >>> sched.step(); state = sched.state_dict()
    >>> again = fg.optim.StepLR(opt, step_size=1, gamma=0.5)  # built at lr 0.5
    >>> again.load_state_dict(state); again.base_lrs, again.last_epoch, again.get_last_lr()
    ([1.0], 1, [0.5])
    """

    # the schedule's own arguments: name -> (checker, the type it is stored as)
    arguments: dict = {}

    def __init__(self, optimizer: Optimizer, **arguments):
        name = type(self).__name__
        if not isinstance(optimizer, Optimizer):
            raise fail(name, f"expected an optimizer, got {type(optimizer).__name__}",
                       f"pass the optimizer: fg.optim.{name}(opt, ...)")
        self._check_arguments(arguments, name)
        self.optimizer = optimizer
        self.base_lrs = [float(optimizer.lr)]
        self.last_epoch = 0
        self._last_lr = [float(optimizer.lr)]
        self._set_arguments(arguments)

    def _set_arguments(self, arguments):
        for key, (_, kind) in self.arguments.items():
            setattr(self, key, kind(arguments[key]))

    @classmethod
    def _check_arguments(cls, arguments, owner):
        for key, (check, _) in cls.arguments.items():
            value = arguments[key]
            problem = check(value)
            if problem:
                raise fail(owner, f"{key} must be {problem}, got {value!r}",
                           f"pass a valid {key}")

    @property
    def base_lr(self) -> float:
        return self.base_lrs[0]

    @property
    def epoch(self) -> int:
        return self.last_epoch

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self):
        """Advance one epoch and set the optimizer's lr from the schedule."""
        try:
            lr = self.lr_at(self.last_epoch + 1)
        except OverflowError:  # gamma ** k beyond float range
            lr = math.inf
        self.optimizer.lr = lr  # checked there: finite and >= 0
        self.last_epoch += 1
        self._last_lr = [self.optimizer.lr]

    def get_last_lr(self):
        """[the learning rate the last ``step()`` set] (the optimizer's, when none has run)."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """Everything but the optimizer: type, last_epoch, base_lrs, _last_lr and the
        schedule's arguments (plain Python numbers and lists)."""
        return {"type": type(self).__name__, "last_epoch": self.last_epoch,
                "base_lrs": list(self.base_lrs), "_last_lr": list(self._last_lr),
                **{key: getattr(self, key) for key in self.arguments}}

    def load_state_dict(self, state: dict):
        """Restore what ``state_dict()`` returned; every field is checked first, so a refused
        state changes nothing. The optimizer's lr is not touched (load the optimizer's own
        state for that), as in PyTorch."""
        name = type(self).__name__
        where = f"{name}.load_state_dict"
        _check_state_fields(state, where, name,
                            {"type", "last_epoch", "base_lrs", "_last_lr", *self.arguments},
                            "sched.state_dict()", "scheduler")
        epoch = state["last_epoch"]
        if (not isinstance(epoch, (int, np.integer)) or isinstance(epoch, (bool, np.bool_))
                or not 0 <= epoch < _MAX_STEPS):
            raise fail(where, f"last_epoch must be an integer >= 0, got {epoch!r}",
                       "pass the 'last_epoch' of a state_dict()")
        for key in ("base_lrs", "_last_lr"):
            value = state[key]
            if (not isinstance(value, (list, tuple)) or len(value) != 1
                    or _NONNEG(value[0]) is not None):
                raise fail(where, f"{key} must be a list of one finite number >= 0, got "
                           f"{value!r}", f"pass the '{key}' of a state_dict()")
        self._check_arguments(state, where)
        self.last_epoch = int(epoch)
        self.base_lrs = [float(state["base_lrs"][0])]
        self._last_lr = [float(state["_last_lr"][0])]
        self._set_arguments(state)


def _positive_int(value):
    if (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
            and value >= 1):
        return None
    return "an integer >= 1"


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    arguments = dict(step_size=(_positive_int, int), gamma=(_NONNEG, float))

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer, step_size=step_size, gamma=gamma)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2."""

    arguments = dict(T_max=(_positive_int, int), eta_min=(_NONNEG, float))

    def __init__(self, optimizer, T_max, eta_min=0.0):  # noqa: N803 - PyTorch's name
        super().__init__(optimizer, T_max=T_max, eta_min=eta_min)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2


__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "LRScheduler", "StepLR",
           "CosineAnnealingLR"]
