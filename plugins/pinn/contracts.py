"""Contracts of PINN residuals (``residual.*``) and collocation samplers (``sampler.*``).

A residual component builds a problem on a box domain (``lower``, ``upper``) with
``residual(x, u)``, ``conditions()`` (each with ``sample(n, generator)`` and ``residual(x, u)``),
``exact(x)``, ``sample_interior(n, generator)`` and ``residual_tolerance``, the bound its own
exact solution meets (see ``phasetrain.plugins.pinn.problem_base``). A sampler component
builds a point set over the run residual's box with ``points()``, ``update(step, residual_fn)``
and ``state_dict()``/``load_state_dict()``; its options' ``n`` is the requested count.

- ``residual.exact_solution``: ``max |residual(x, exact(x))|`` at drawn interior points is within
  the problem's tolerance, and (with the default options) the residual does notice a perturbed
  solution, so a residual that is zero everywhere fails;
- ``residual.conditions``: every condition holds on the exact solution at its own points;
- ``residual.domain_sampler``: points from ``sample_interior`` and from every condition's
  sampler lie in the box (and in the domain), have the requested shape and are reproducible;
- ``residual.evaluates_repeatedly``: a short run evaluates after every step with TensorBoard
  images on, three times, with or without an exact solution, and ``images`` keeps working;
- ``sampler.inside_domain``: the points lie in the box, before and after every update;
- ``sampler.inside_geometry``: on the L-shaped domain of ``poisson-lshape`` the points lie in the
  L, before and after every update;
- ``sampler.count``: a fresh sampler holds the requested ``n`` points, and never fewer;
- ``sampler.reproducible``: the same seed gives the same points through the same updates, and
  a sampler restored from its (checkpointed) state continues exactly like the original.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from hypothesis import strategies as st

from phasetrain import hookimpl
from phasetrain.testing import strategies
from phasetrain.testing.bits import differences, through_checkpoint
from phasetrain.testing.contract import context, contract

PINN = {"use": "pinn", "hidden": 8, "depth": 2, "n_initial": 8, "n_boundary": 8, "eval_grid": [3]}
#: Contracts that train draw a sampler's ``n`` (its point count) up to this.
SMALL_POINTS = 64


def _few_points(subject: Any, drawn: Any) -> Any:
    # A PINN step costs in proportion to the points; the sampler's code path does not depend on
    # how many. Contracts that train ask for at most SMALL_POINTS.
    if "n" not in attrs.fields_dict(subject.options_class) or "n" in subject.settings.options:
        return drawn
    return drawn.flatmap(lambda o: st.integers(1, SMALL_POINTS).map(
        lambda n: strategies.construct(type(o), {**attrs.asdict(o, recurse=False), "n": n})))


@context("residual")
def _residual_context(subject: Any, options: Any, raw: dict[str, Any]) -> None:
    raw.update(task=dict(PINN), sampler={"use": "sobol", "n": 32})


@context("sampler", small=_few_points)
def _sampler_context(subject: Any, options: Any, raw: dict[str, Any]) -> None:
    raw.update(task=dict(PINN), residual={"use": "poisson2d"})

#: Tolerance for a problem that does not state its own ``residual_tolerance``.
DEFAULT_TOLERANCE = 1e-6
#: A perturbed solution must leave a residual this many times the tolerance somewhere.
SENSITIVITY = 100.0

# ---------------------------------------------------------------------------------------------
# Residuals
# ---------------------------------------------------------------------------------------------


def _problem(subject: Any, data: Any) -> tuple[Any, Any]:
    options = data.draw(subject.options(), label="options")
    return options, subject.rebuild(subject.context_trainer(), options)


def _box(problem: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor([float(v) for v in problem.lower], dtype=torch.float64),
            torch.tensor([float(v) for v in problem.upper], dtype=torch.float64))


def _tolerance(problem: Any) -> float:
    return float(getattr(problem, "residual_tolerance", DEFAULT_TOLERANCE))


def _worst(r: torch.Tensor, x: torch.Tensor) -> tuple[float, list[float]]:
    per_point = r.detach().reshape(r.shape[0], -1).abs().amax(dim=1)
    index = int(torch.nan_to_num(per_point, nan=float("inf")).argmax())
    return float(per_point[index]), [round(float(v), 6) for v in x[index].detach()]


def _outside(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> list[float] | None:
    bad = ~((x >= lower) & (x <= upper)).all(dim=1) | ~torch.isfinite(x).all(dim=1)
    return [float(v) for v in x[bad][0]] if bool(bad.any()) else None


def _has_exact(subject: Any) -> str | None:
    problem = subject.context_trainer().component("residual")
    if getattr(problem, "reference", False):
        return f"{type(problem).__name__}'s solution is a numerical reference, not differentiable by autograd"
    lower, upper = _box(problem)
    try:
        problem.exact(((lower + upper) / 2)[None])
    except NotImplementedError:
        return f"{type(problem).__name__} has no exact solution to check against"
    return None


@contract("residual.exact_solution", "residual", examples=10, applies=_has_exact)
def exact_solution(subject: Any, data: Any) -> None:
    """The residual of the exact solution is ~0 (the problem's tolerance) at interior points."""
    options, problem = _problem(subject, data)
    lower, upper = _box(problem)
    x = data.draw(strategies.points_in_box(lower.tolist(), upper.tolist()), label="points").requires_grad_(True)
    r = problem.residual(x, problem.exact(x))
    if r.shape[0] != x.shape[0]:
        subject.fail(f"residual gave {tuple(r.shape)} for {x.shape[0]} points")
    tolerance = _tolerance(problem)
    worst, where = _worst(r, x)
    if not worst <= tolerance:
        subject.fail(f"with options {options!r}, |residual(x, exact(x))| = {worst:.3g} at x = {where} "
                     f"exceeds the problem's tolerance {tolerance:.3g}")
    if options != subject.default_options():
        return  # drawn coefficients may make the PDE degenerate (no stiffness, no mass)
    probe = lower + (upper - lower) * (0.05 + 0.9 * torch.rand(64, len(lower), dtype=torch.float64,
                                                                  generator=torch.Generator().manual_seed(0)))
    probe.requires_grad_(True)
    bump = 0.05 * torch.sin(1.3 * probe.sum(dim=1, keepdim=True) + 0.4) * (1 + probe[:, :1] ** 2)
    perturbed = problem.residual(probe, problem.exact(probe) + bump)
    if not float(perturbed.detach().abs().max()) > SENSITIVITY * tolerance:
        subject.fail(f"with options {options!r}, the residual of a visibly perturbed solution stays within "
                     f"{SENSITIVITY:g} x the tolerance: it does not measure the PDE")


@contract("residual.conditions", "residual", examples=6, applies=_has_exact)
def conditions(subject: Any, data: Any) -> None:
    """Every initial/boundary condition holds on the exact solution at its own points."""
    options, problem = _problem(subject, data)
    n = data.draw(st.integers(1, 32), label="points per condition")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    tolerance = _tolerance(problem)
    for condition in problem.conditions():
        if getattr(condition, "noisy", False):
            continue  # measurements with noise hold only to within it
        rows = condition.sample(n, torch.Generator().manual_seed(seed)).detach().clone()
        if hasattr(condition, "evaluate"):
            r = condition.evaluate(problem.exact, rows)
        else:
            r = condition.residual(rows.requires_grad_(True), problem.exact(rows))
        worst, where = _worst(r, rows)
        if not worst <= tolerance:
            subject.fail(f"with options {options!r}, condition {condition.name!r} is off by {worst:.3g} on the "
                         f"exact solution at x = {where} (tolerance {tolerance:.3g})")


def _has_domain_sampler(subject: Any) -> str | None:
    problem = subject.context_trainer().component("residual")
    if not hasattr(problem, "sample_interior"):
        return f"{type(problem).__name__} has no sample_interior(n, generator)"
    return None


def _points_of(condition: Any, rows: torch.Tensor) -> torch.Tensor:
    """The points (coordinates) of a condition's rows; a plain condition's rows are its points."""
    split = getattr(condition, "split", None)
    return rows if split is None else split(rows)[0]


@contract("residual.domain_sampler", "residual", examples=6, applies=_has_domain_sampler)
def domain_sampler(subject: Any, data: Any) -> None:
    """Points from the problem's samplers lie in its box, in the requested shape, reproducibly."""
    options, problem = _problem(subject, data)
    lower, upper = _box(problem)
    n = data.draw(st.integers(0, 64), label="points")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    samplers = [("sample_interior", problem.sample_interior, None)]
    samplers += [(f"condition {c.name!r}", c.sample, c) for c in problem.conditions()]
    domain = getattr(problem, "domain", None)
    for what, sample, condition in samplers:
        rows = sample(n, torch.Generator().manual_seed(seed))
        x = rows if condition is None else _points_of(condition, rows)
        group = getattr(condition, "group", 1)
        if rows.shape[0] != n or tuple(x.shape) != (n * group, len(lower)):
            subject.fail(f"{what} gave points of shape {tuple(x.shape)} for n = {n} in {len(lower)} dimensions")
        if domain is not None and n and not bool(domain.inside(x.detach().to(torch.float64)).all()):
            subject.fail(f"with options {options!r}, {what} gave points outside the domain {domain!r}")
        point = _outside(x.detach().to(torch.float64), lower, upper)
        if point is not None:
            subject.fail(f"with options {options!r}, {what} gave the point {point}, outside the box "
                         f"{lower.tolist()}..{upper.tolist()}")
        again = sample(n, torch.Generator().manual_seed(seed))
        if not torch.equal(rows, again):
            subject.fail(f"{what} gave other points from a generator with the same seed")


class _Evaluations:
    """Counts evaluations and the metrics each reported."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, Any]] = []

    @hookimpl
    def eval_end(self, metrics: Any) -> None:
        self.metrics.append(dict(metrics))


@contract("residual.evaluates_repeatedly", "residual", examples=1)
def evaluates_repeatedly(subject: Any, data: Any) -> None:
    """Three evaluations in a row, TensorBoard images on: none fails, each reports the same keys."""
    from phasetrain.loop import Trainer

    options = data.draw(subject.options(), label="options")
    raw = subject.raw(options, steps=3, out_dir=subject.run_dir(), run={"eval_every": 1})
    raw["observers"]["tensorboard"] = {"image_every": 1}
    seen = _Evaluations()
    with subject._building(options):
        trainer = Trainer(subject.config(raw), registry=subject.registry, plugins=[*subject.hooks(options), seen])
    subject.fit(trainer, options)
    if len(seen.metrics) != 3:
        subject.fail(f"a 3-step run evaluating after every step evaluated {len(seen.metrics)} times")
    keys = [sorted(m) for m in seen.metrics]
    if any(k != keys[0] for k in keys):
        subject.fail(f"evaluations reported different metrics: {keys}")
    problem = trainer.component("residual")
    try:
        problem.exact(torch.tensor([problem.lower], dtype=torch.float64))
    except NotImplementedError:
        if "rel_l2" in keys[0]:
            subject.fail("reported rel_l2 without an exact solution")
    from phasetrain.plugins.pinn.images import to_rgb

    for name, figure in trainer.task.images(trainer.model).items():
        if not hasattr(figure, "savefig"):
            subject.fail(f"images()[{name!r}] is a {type(figure).__name__}, not a matplotlib Figure")
        picture = to_rgb(figure)
        if picture.ndim != 3 or picture.shape[2] != 3 or picture.size == 0:
            subject.fail(f"images()[{name!r}] renders to shape {picture.shape}, not (H, W, 3)")


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def _sampler_setup(subject: Any, data: Any) -> tuple[Any, Any, Any, Any, list[int]]:
    """Options (a drawn small ``n`` unless fixed), the context, the run's problem, a synthetic
    residual field and the steps at which to call ``update``."""
    options = data.draw(subject.options(small=True), label="options")
    trainer = subject.context_trainer()
    problem = trainer.component("residual")
    field = data.draw(strategies.residual_fields(len(problem.lower)), label="residual field")
    steps = list(range(data.draw(st.integers(0, 16), label="steps")))
    return options, trainer, problem, field, steps


@contract("sampler.inside_domain", "sampler", examples=15)
def inside_domain(subject: Any, data: Any) -> None:
    """Points lie in the residual's box, initially and after every update."""
    options, trainer, problem, field, steps = _sampler_setup(subject, data)
    sampler = subject.rebuild(trainer, options)
    lower, upper = _box(problem)
    for step in [None, *steps]:
        if step is not None:
            sampler.update(step, field)
        points = sampler.points()
        where = "initially" if step is None else f"after update({step})"
        if points.dim() != 2 or points.shape[1] != len(lower):
            subject.fail(f"{where}: points have shape {tuple(points.shape)}; expected (M, {len(lower)})")
        point = _outside(points.detach().to(torch.float64), lower, upper)
        if point is not None:
            subject.fail(f"with options {options!r}, {where} the point {point} lies outside the box "
                         f"{lower.tolist()}..{upper.tolist()}")


def _has_count(subject: Any) -> str | None:
    if not hasattr(subject.default_options(), "n"):
        return "its options have no 'n', so no count was requested"
    return None


@contract("sampler.inside_geometry", "sampler", examples=6)
def inside_geometry(subject: Any, data: Any) -> None:
    """On a domain that is not a box (the L of ``poisson-lshape``) the points lie in the domain."""
    from hypothesis import reject

    from phasetrain.errors import BadInput
    from phasetrain.loop import Trainer

    options = data.draw(subject.options(small=True), label="options")
    raw = subject.raw(options, out_dir=subject.run_dir())
    raw["residual"] = {"use": "poisson-lshape"}
    try:
        trainer = Trainer(subject.config(raw), registry=subject.registry, plugins=subject.hooks(options))
    except BadInput:
        reject()
    sampler, domain = subject.built(trainer), trainer.component("residual").domain
    field = data.draw(strategies.residual_fields(2), label="residual field")
    for step in [None, *range(data.draw(st.integers(0, 8), label="steps"))]:
        if step is not None:
            sampler.update(step, field)
        points = sampler.points().detach().to(torch.float64)
        outside = ~domain.inside(points)
        if bool(outside.any()):
            where = "initially" if step is None else f"after update({step})"
            subject.fail(f"with options {options!r}, {where} the point {points[outside][0].tolist()} lies outside "
                         f"the L-shaped domain of poisson-lshape (inside its bounding box)")


@contract("sampler.count", "sampler", examples=15, applies=_has_count)
def count(subject: Any, data: Any) -> None:
    """A fresh sampler holds the requested n points; updates never leave fewer."""
    options, trainer, _problem_, field, steps = _sampler_setup(subject, data)
    sampler = subject.rebuild(trainer, options)
    got = sampler.points().shape[0]
    if got != options.n:
        subject.fail(f"asked for n = {options.n} points, holds {got}")
    for step in steps:
        sampler.update(step, field)
        got = sampler.points().shape[0]
        if got < options.n:
            subject.fail(f"asked for n = {options.n} points, holds {got} after update({step})")


@contract("sampler.reproducible", "sampler", examples=10)
def reproducible(subject: Any, data: Any) -> None:
    """Same seed -> same points through the same updates; a restored sampler continues identically."""
    options, trainer, _problem_, field, steps = _sampler_setup(subject, data)
    first, second = subject.rebuild(trainer, options), subject.rebuild(trainer, options)
    cut = data.draw(st.integers(0, len(steps)), label="saved after")
    restored = None
    for index in range(len(steps) + 1):
        if index == cut:
            restored = subject.rebuild(trainer, options)
            restored.load_state_dict(through_checkpoint(first.state_dict()))
        followers = [("a sampler built with the same seed", second)]
        if restored is not None:
            followers.append((f"a sampler restored from the state after {cut} updates", restored))
        for what, other in followers:
            diff = differences(first.points(), other.points(), "points")
            if diff:
                subject.fail(f"with options {options!r}, {what} holds other points after {index} updates: "
                             + "; ".join(diff))
        if index < len(steps):
            for sampler in (first, second, *([restored] if restored is not None else [])):
                sampler.update(steps[index], field)
