"""The PINN plugin: ``residual`` components (one per problem), ``sampler`` components and the
``pinn`` task, registered through phasetrain's own entry points like any third-party plugin.

A ``residual`` component is a :class:`~phasetrain.plugins.pinn.problem_base.Problem`: its
residual, conditions, box, input order and exact solution. A ``sampler`` component is a
:class:`~phasetrain.plugins.pinn.sampler_base.Sampler` over the box of the run's residual,
seeded from the run seed. A third party adds a PDE the same way: subclass ``Problem`` and return
``residual_component(MyProblem, MyOptions)`` from its own ``phasetrain_components`` hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import attrs

from phasetrain import Component, NoOptions, hookimpl
from phasetrain.errors import BadInput, ConfigError
from phasetrain.registry import Kind

from .options import PROBLEM_OPTIONS, SAMPLER_OPTIONS, sampler_kwargs
from .problem_base import Problem
from .problems import PROBLEMS
from .samplers import SAMPLERS


def residual_component(
    problem: type[Problem], options: type = NoOptions, summary: str = ""
) -> Component:
    """A ``residual`` component that builds ``problem(**attrs.asdict(options))``.

    ``options`` is an attrs class whose fields are the problem's keyword arguments (its config
    keys); the component's name is ``problem.name``. A ``ValueError`` from the problem's
    constructor becomes a config error on the ``[residual]`` section.
    """

    def build(values: Any, ctx: Any) -> Problem:
        kwargs = attrs.asdict(values, recurse=False) if attrs.has(type(values)) else {}
        try:
            return problem(**kwargs)
        except ValueError as exc:
            raise ConfigError(ctx.config.source, "residual", str(exc)) from None

    doc = (problem.__doc__ or "").strip().splitlines()
    inputs = ", ".join(problem.input_names)
    return Component("residual", problem.name, build, options, summary or f"{doc[0] if doc else problem.name} ({inputs})")


def _sampler_factory(name: str) -> Callable[[Any, Any], Any]:
    cls = SAMPLERS[name]

    def build(options: Any, ctx: Any) -> Any:
        from .task import derive_seed

        problem = ctx.component("residual")
        if problem is None:
            raise ConfigError(
                ctx.config.source, "sampler",
                f"sampler {name!r} draws points in the box of the run's [residual] section, which is missing",
            )
        seed = derive_seed(ctx.seed + options.seed_offset, "pinn-sampler")
        try:
            region = None if problem.is_box else problem.domain  # the box itself needs no rejection
            return cls(problem.lower, problem.upper, options.n, seed, region=region, **sampler_kwargs(options))
        except ValueError as exc:
            raise BadInput(f"{ctx.config.source}: sampler: {exc}") from None

    return build


def _task(options: Any, ctx: Any) -> Any:
    from .task import PINN

    return PINN(options, ctx)


@runtime_checkable
class Residual(Protocol):
    """A ``[residual]`` component: a PDE on a domain (see :class:`.problem_base.Problem`, which the
    ``pinn`` task expects: its input names, domain, unknowns and hard constraints)."""

    lower: Any
    upper: Any

    def residual(self, x: Any, u: Any) -> Any: ...

    def conditions(self) -> Any: ...

    def exact(self, x: Any) -> Any: ...


@runtime_checkable
class CollocationSampler(Protocol):
    """A ``[sampler]`` component: collocation points (see :class:`.sampler_base.Sampler`)."""

    def points(self) -> Any: ...

    def update(self, step: int, residual_fn: Any) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@hookimpl
def phasetrain_kinds() -> list[Kind]:
    contracts = "phasetrain.plugins.pinn.contracts"
    return [
        Kind("residual", "a PDE residual with its conditions, domain and exact solution", Residual, contracts=contracts),
        Kind("sampler", "collocation points for the pinn task", CollocationSampler, contracts=contracts),
    ]


@hookimpl
def phasetrain_components() -> list[Component]:
    from .task import PINNOptions

    summaries = {
        "uniform": "i.i.d. uniform collocation points",
        "sobol": "scrambled Sobol' low-discrepancy points",
        "lhs": "Latin hypercube points",
        "rad": "residual-based adaptive distribution (Wu et al. 2023): all points redrawn",
        "rar-d": "residual-based adaptive refinement with distribution: points added",
    }
    return [
        *(residual_component(PROBLEMS[name], options) for name, options in PROBLEM_OPTIONS.items()),
        *(Component("sampler", name, _sampler_factory(name), SAMPLER_OPTIONS[name], summaries[name])
          for name in SAMPLERS),
        Component("task", "pinn", _task, PINNOptions,
                  "physics-informed MLP on a [residual] with a [sampler]; reports rel_l2 vs the exact solution"),
    ]
