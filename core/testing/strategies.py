"""Hypothesis strategies for testing phasetrain components.

- :func:`options`: valid instances of a component's options class, derived from its attrs
  fields, their types and their validators;
- :func:`parameter_sets`, :func:`models`, :func:`quadratics`: small parameters and models;
- :func:`optimizer_states`: optimizer-state trees with awkward tensors (every dtype, empty and
  non-contiguous tensors, NaN and infinities, nested lists and tuples);
- :func:`trajectories`: training trajectories (weight updates, losses, learning rates) to feed a
  dynamics model;
- :func:`points_in_box` and :func:`residual_fields`: collocation points inside a box domain and
  synthetic residual magnitudes over it.

How :func:`options` draws a field: from its type (``bool``, ``int``, ``float``, ``str``,
``tuple``, ``list``, ``dict``, ``X | None``, nested attrs classes, ``Choice.of(kind)``), inside the
bounds its phasetrain validators declare (``positive``, ``in_range``, ``one_of``, ...; attrs'
own ``gt``/``ge``/``lt``/``le``/``in_`` too), near its default: integers a few steps above the
lowest allowed value or between half and twice the default, floats between the bounds (up to
ten times the default where there is no upper bound), strings as short identifiers. A drawn value its validator refuses becomes the default, and a combination
the class refuses as a whole (a cross-field check) keeps as many drawn fields as it can. The
default value is always among the candidates, so the defaults are what shrinking ends at.
"""

from __future__ import annotations

import copy
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch
from hypothesis import strategies as st

from phasetrain.config import Choice

SearchStrategy = st.SearchStrategy

#: Integers drawn from the lowest allowed value go this far up (more in "wide" draws).
SMALL_SPAN = 8

_identifiers = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)


class CannotGenerate(TypeError):
    """A required field whose values cannot be derived from its type."""


# ---------------------------------------------------------------------------------------------
# Options classes
# ---------------------------------------------------------------------------------------------


def options(cls: type, *, registry: Any = None, small: bool = False) -> SearchStrategy:
    """Valid instances of the attrs options class ``cls``.

    ``registry`` (a :class:`phasetrain.registry.Registry`) lets fields typed
    ``Choice.of(kind)`` pick any installed component of that kind. ``small=True`` draws integers
    only a few steps above their lower bound (or at their default), so that sizes and counts
    stay small for contracts that train with the options.
    """
    return _options(cls, registry, small, depth=0)


def _options(cls: type, registry: Any, small: bool, depth: int) -> SearchStrategy:
    if not attrs.has(cls):
        return st.just(cls())
    fields = _fields(cls)
    per_field: dict[str, SearchStrategy] = {}
    for field in fields:
        if not field.init:
            continue
        per_field[_alias(field)] = _field_values(cls, field, registry, small, depth)
    return st.fixed_dictionaries(per_field).map(lambda drawn: construct(cls, drawn))


def _fields(cls: type) -> tuple[attrs.Attribute, ...]:
    try:
        attrs.resolve_types(cls)
    except Exception:  # annotations that name things only known to a type checker
        pass
    return attrs.fields(cls)


def _alias(field: attrs.Attribute) -> str:
    return getattr(field, "alias", None) or field.name.lstrip("_")


def default_of(field: attrs.Attribute) -> Any:
    """The field's default value (a fresh one for factories), or ``attrs.NOTHING``."""
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        if default.takes_self:
            return attrs.NOTHING
        return default.factory()
    return default


def construct(cls: type, drawn: Mapping[str, Any]) -> Any:
    """``cls(**drawn)``; if the class refuses the combination, the defaults with as many drawn
    values as it accepts (fields in declaration order)."""
    try:
        return cls(**drawn)
    except Exception:
        pass
    required = {
        _alias(f): drawn[_alias(f)] for f in attrs.fields(cls)
        if f.init and default_of(f) is attrs.NOTHING and _alias(f) in drawn
    }
    kept = dict(required)
    instance = cls(**kept)
    for key, value in drawn.items():
        if key in kept:
            continue
        try:
            instance = cls(**{**kept, key: value})
        except Exception:
            continue
        kept[key] = value
    return instance


def _field_values(cls: type, field: attrs.Attribute, registry: Any, small: bool, depth: int) -> SearchStrategy:
    default = default_of(field)
    allows = validator_allows(field.validator)
    typed = None if isinstance(field.type, str) or field.type is None else field.type
    base = _for_type(typed, default, allows, registry, small, depth) if typed is not None else None
    if base is None and default is attrs.NOTHING:
        raise CannotGenerate(f"{cls.__name__}.{field.name}: no default and no way to draw a {field.type!r}")
    if default is attrs.NOTHING:
        return base
    fresh = st.builds(copy.deepcopy, st.just(default))  # a mutable default is never shared
    if base is None:
        return fresh
    return st.one_of(fresh, base.map(lambda v: v if field_accepts(field, v) else copy.deepcopy(default)))


def field_accepts(field: attrs.Attribute, value: Any) -> bool:
    """Whether the field's own validator lets ``value`` through (True when it cannot tell without
    the rest of the instance)."""
    if field.validator is None:
        return True
    try:
        field.validator(None, field, value)
    except (ValueError, TypeError):
        return False
    except Exception:  # a validator that reads other fields of the instance
        return True
    return True


def validator_allows(validator: Any) -> dict[str, Any]:
    """Bounds and choices a validator declares: phasetrain's own (``allows``), attrs' number
    comparisons and ``in_``, and ``and_`` combinations of them."""
    if validator is None:
        return {}
    found: dict[str, Any] = {}
    parts = getattr(validator, "_validators", None) or getattr(validator, "validators", None)
    if isinstance(parts, (list, tuple)):
        for part in parts:
            found.update(validator_allows(part))
        return found
    declared = getattr(validator, "allows", None)
    if isinstance(declared, Mapping):
        return dict(declared)
    bound, op = getattr(validator, "bound", None), getattr(validator, "compare_op", None)
    if bound is not None and op in (">", ">=", "<", "<="):
        if op in (">", ">="):
            return {"low": bound, "low_open": op == ">"}
        return {"high": bound, "high_open": op == "<"}
    choices = getattr(validator, "options", None)
    if isinstance(choices, (list, tuple, set, frozenset)):
        return {"choices": tuple(choices)}
    return {}


def _for_type(tp: Any, default: Any, allows: Mapping[str, Any], registry: Any, small: bool, depth: int) -> SearchStrategy | None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        branches = []
        for arg in args:
            if arg is type(None):
                branches.append(st.none())
                continue
            inner = default if _is_instance(default, arg) else attrs.NOTHING
            sub = _for_type(arg, inner, allows, registry, small, depth)
            if sub is not None:
                branches.append(sub)
        return st.one_of(branches) if branches else None
    if "choices" in allows and allows["choices"]:
        return st.sampled_from(list(allows["choices"]))
    if tp is bool:
        return st.booleans()
    if tp is int:
        return _ints(default, allows, small)
    if tp is float:
        return _floats(default, allows)
    if tp is str:
        return _identifiers
    if origin is tuple or tp is tuple:
        if not args:
            return None
        if len(args) == 2 and args[1] is Ellipsis:
            elem = _for_type(args[0], attrs.NOTHING, {}, registry, small, depth + 1)
            return None if elem is None else st.lists(elem, max_size=3).map(tuple)
        defaults = default if isinstance(default, tuple) and len(default) == len(args) else [attrs.NOTHING] * len(args)
        elems = [_for_type(a, d, {}, registry, small, depth + 1) for a, d in zip(args, defaults)]
        return None if any(e is None for e in elems) else st.tuples(*elems)
    if origin in (list, Sequence) or tp is list:
        if not args:
            return None
        first = default[0] if isinstance(default, list) and default else attrs.NOTHING
        elem = _for_type(args[0], first, {}, registry, small, depth + 1)
        return None if elem is None else st.lists(elem, max_size=3)
    if origin in (dict, Mapping) or tp is dict:
        if len(args) != 2 or args[0] is not str:
            return None
        elem = _for_type(args[1], attrs.NOTHING, {}, registry, small, depth + 1)
        return None if elem is None else st.dictionaries(_identifiers, elem, max_size=2)
    if isinstance(tp, type) and issubclass(tp, Choice):
        return _choices(tp, registry)
    if isinstance(tp, type) and attrs.has(tp) and depth < 3:
        try:
            return _options(tp, registry, small, depth + 1)
        except CannotGenerate:
            return None
    return None


def _is_instance(value: Any, tp: Any) -> bool:
    try:
        return isinstance(value, typing.get_origin(tp) or tp)
    except TypeError:
        return False


def _ints(default: Any, allows: Mapping[str, Any], small: bool) -> SearchStrategy:
    low, high = allows.get("low"), allows.get("high")
    if low is not None:
        lo = math.floor(low) + 1 if allows.get("low_open") and float(low).is_integer() else math.ceil(low)
    else:
        lo = (min(default, 0) if isinstance(default, int) else 0) - 2
    hi = None
    if high is not None:
        hi = math.ceil(high) - 1 if allows.get("high_open") and float(high).is_integer() else math.floor(high)
    top = lo + SMALL_SPAN if hi is None else min(hi, lo + SMALL_SPAN)
    branches = [st.integers(lo, max(lo, top))]
    if not small and isinstance(default, int) and default > lo + SMALL_SPAN:
        near_lo, near_hi = max(lo, default // 2), default * 2 if hi is None else min(hi, default * 2)
        if near_lo <= near_hi:
            branches.append(st.integers(near_lo, near_hi))
    return st.one_of(branches)


def _floats(default: Any, allows: Mapping[str, Any]) -> SearchStrategy:
    low, high = allows.get("low"), allows.get("high")
    centre = float(default) if isinstance(default, (int, float)) and math.isfinite(default) else 1.0
    spread = max(1.0, 10.0 * abs(centre))
    if low is not None and high is not None:
        lo, hi = float(low), float(high)
    elif low is not None:  # bounded below: up to ten times the default (at least one above)
        lo = float(low)
        hi = max(lo + 1.0, 10.0 * centre)
    elif high is not None:
        hi = float(high)
        lo = min(hi - 1.0, centre - spread)
    else:
        lo, hi = centre - spread, centre + spread
    return st.floats(
        lo, hi, exclude_min=bool(allows.get("low_open")), exclude_max=bool(allows.get("high_open")),
        allow_nan=False, allow_infinity=False, allow_subnormal=False,
    )


def _choices(tp: type[Choice], registry: Any) -> SearchStrategy | None:
    if registry is None:
        return None
    made = []
    for name in registry.names(tp.kind):
        try:
            made.append(tp(name, registry.get(tp.kind, name).config()))
        except Exception:  # a component whose options have required fields
            continue
    return st.sampled_from(made) if made else None


# ---------------------------------------------------------------------------------------------
# Parameters, models, quadratics
# ---------------------------------------------------------------------------------------------

FLOAT_DTYPES = (torch.float32, torch.float64)

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def parameter_sets(draw: Callable, max_tensors: int = 3, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> list[torch.nn.Parameter]:
    """A few parameters of small shapes (0-dim included) in one floating dtype."""
    dtype = draw(st.sampled_from(list(dtypes)))
    sizes = draw(st.lists(shapes, min_size=1, max_size=max_tensors))
    g = _generator(draw(st.integers(0, 2**31 - 1)))
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype)) for s in sizes]


@st.composite
def models(draw: Callable, max_width: int = 8) -> torch.nn.Module:
    """A small MLP (1 to 3 linear layers with tanh between them), seeded."""
    widths = draw(st.lists(st.integers(1, max_width), min_size=2, max_size=4))
    g = _generator(draw(st.integers(0, 2**31 - 1)))
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torch.nn.Tanh())
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():  # initialised from the drawn seed, not the global random stream
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)
    return model


@attrs.frozen
class Quadratic:
    """``f(x) = 1/2 sum_i a_i (x_i - b_i)^2`` over a parameter set: a convex problem with a known
    minimum. ``start`` is at least ``min_distance`` from ``b`` in every coordinate."""

    start: tuple[torch.Tensor, ...]
    curvature: tuple[torch.Tensor, ...]
    target: tuple[torch.Tensor, ...]

    def parameters(self) -> list[torch.nn.Parameter]:
        return [torch.nn.Parameter(s.clone()) for s in self.start]

    def loss(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for x, a, b in zip(params, self.curvature, self.target, strict=True):
            total = total + (0.5 * a * (x - b) ** 2).sum().double()
        return total


@st.composite
def quadratics(draw: Callable, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES, min_distance: float = 0.5) -> Quadratic:
    """A :class:`Quadratic` over 1 to 3 small tensors, curvatures in [0.5, 2]."""
    dtype = draw(st.sampled_from(list(dtypes)))
    sizes = draw(st.lists(shapes, min_size=1, max_size=3))
    g = _generator(draw(st.integers(0, 2**31 - 1)))
    start, curvature, target = [], [], []
    for size in sizes:
        b = torch.randn(size, generator=g, dtype=torch.float64)
        sign = torch.randint(0, 2, size, generator=g).double() * 2 - 1
        distance = min_distance + 1.5 * torch.rand(size, generator=g, dtype=torch.float64)
        a = 0.5 + 1.5 * torch.rand(size, generator=g, dtype=torch.float64)
        start.append((b + sign * distance).to(dtype))
        curvature.append(a.to(dtype))
        target.append(b.to(dtype))
    return Quadratic(tuple(start), tuple(curvature), tuple(target))


# ---------------------------------------------------------------------------------------------
# Optimizer states
# ---------------------------------------------------------------------------------------------

STATE_DTYPES = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool, torch.complex64,
)


@st.composite
def state_tensors(draw: Callable) -> torch.Tensor:
    """One tensor of any dtype an optimizer might keep: empty, 0-dim, non-contiguous, non-finite."""
    dtype = draw(st.sampled_from(STATE_DTYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    raw = torch.randn(tuple(shape), generator=_generator(draw(st.integers(0, 2**31 - 1))), dtype=torch.float64) * 100
    if raw.numel() and draw(st.booleans()):
        raw.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), -0.0]))
    t = torch.complex(raw.float(), -raw.float()) if dtype == torch.complex64 else raw.to(dtype)
    if t.dim() == 2 and draw(st.booleans()):
        t = t.t()  # a transposed view: non-contiguous strides
    return t


_leaves = st.one_of(state_tensors(), st.integers(-5, 5), st.floats(allow_nan=False), st.none(), st.booleans())
_state_entry = st.dictionaries(
    st.sampled_from(["step", "exp_avg", "exp_avg_sq", "momentum_buffer", "old_dirs", "ro", "H_diag", "n_iter", "extra"]),
    st.one_of(_leaves, st.lists(state_tensors(), max_size=3), st.tuples(state_tensors(), st.integers(0, 9))),
    max_size=5,
)


def optimizer_states(max_params: int = 4) -> SearchStrategy:
    """Per-parameter optimizer state: a list (one entry per parameter) of dicts of tensors,
    numbers and nested lists/tuples, as ``optimizer.state[param]`` may hold."""
    return st.lists(_state_entry, min_size=0, max_size=max_params)


# ---------------------------------------------------------------------------------------------
# Training trajectories
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class TrajectoryStep:
    """One event of a trajectory: ``observe`` a real step (``delta`` was just applied, the loss
    and learning rate are those of the step), ``rebase`` (weights moved by something else), or
    ``penalize`` (a predicted stretch was rolled back)."""

    event: str
    delta: tuple[torch.Tensor, ...]
    loss: float
    lr: float


@st.composite
def trajectories(draw: Callable, like: Sequence[torch.Tensor], min_steps: int = 2, max_steps: int = 12) -> list[TrajectoryStep]:
    """A training trajectory over tensors shaped like ``like``: updates that mix a steady
    direction with noise, a loss that falls with noise, a learning rate that may change."""
    n = draw(st.integers(min_steps, max_steps))
    g = _generator(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.floats(1e-4, 1e-1))
    steady = draw(st.floats(0.0, 1.0))  # share of each update that keeps one direction
    loss = draw(st.floats(0.01, 10.0))
    decay = draw(st.floats(0.5, 1.0))
    lr = draw(st.floats(1e-4, 1e-1))
    direction = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in like]
    events = draw(st.lists(st.sampled_from(["observe"] * 6 + ["rebase", "penalize"]), min_size=n, max_size=n))
    steps = []
    for event in events:
        noise = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in like]
        delta = tuple(
            (scale * (steady * d + (1 - steady) * z)).to(t.dtype).to(t.device)
            for d, z, t in zip(direction, noise, like)
        )
        loss = loss * decay * (1 + 0.05 * float(torch.randn((), generator=g)))
        if draw(st.booleans()) and event == "observe":
            lr = lr * draw(st.sampled_from([0.5, 1.0, 2.0]))
        steps.append(TrajectoryStep(event, delta, abs(loss), lr))
    return steps


# ---------------------------------------------------------------------------------------------
# Collocation points and residuals
# ---------------------------------------------------------------------------------------------


def points_in_box(lower: Sequence[float], upper: Sequence[float], *, max_points: int = 16, margin: float = 0.01) -> SearchStrategy:
    """(n, d) float64 points inside ``[lower, upper]``, kept ``margin`` (a fraction of each side)
    away from the boundary; drawn coordinate by coordinate, so failures shrink to few points."""
    sides = [
        st.floats(lo + margin * (hi - lo), hi - margin * (hi - lo), allow_nan=False, allow_infinity=False)
        for lo, hi in zip(lower, upper)
    ]
    rows = st.lists(st.tuples(*sides), min_size=1, max_size=max_points)
    return rows.map(lambda r: torch.tensor(r, dtype=torch.float64).reshape(len(r), len(sides)))


@attrs.frozen
class ResidualField:
    """A smooth synthetic residual magnitude ``|sin(k . x + phase)|^power`` (M,) over points
    (M, d), standing in for a model's PDE residual when testing adaptive samplers."""

    k: tuple[float, ...]
    phase: float
    power: float

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        k = torch.tensor(self.k, dtype=torch.float64)
        x = points.to(torch.float64)
        return torch.sin(x @ k[: x.shape[1]] + self.phase).abs() ** self.power


def residual_fields(dim: int) -> SearchStrategy:
    """:class:`ResidualField` instances for points with ``dim`` coordinates."""
    return st.builds(
        ResidualField,
        k=st.tuples(*[st.floats(-8.0, 8.0) for _ in range(dim)]),
        phase=st.floats(0.0, 6.3),
        power=st.sampled_from([0.5, 1.0, 2.0]),
    )
