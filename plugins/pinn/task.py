"""The ``pinn`` task: a physics-informed MLP trained on a ``[residual]`` with a ``[sampler]``.

The loss is a weighted sum of mean squared residuals, one term for the PDE on the sampler's
collocation points and one per condition on rows drawn once from the run seed::

    loss = w_pde * mean_i |r(x_i)|^2 + sum_c w_c * mean_j |r_c(row_j)|^2

(``|.|^2`` sums over residual components; a condition's row may hold several points, such as a
periodic pair, and data, such as normals). With ``causal_epsilon`` the PDE term is weighted over
time bins (:mod:`.causal`); with ``hard_constraints`` the network satisfies some conditions
exactly and they leave the loss; a problem's unknown coefficients are trainable parameters of
the model (:mod:`.inverse`). Evaluation is in :mod:`.evaluation`.

Memory is bounded by chunking:

* training: with ``run.grad_accum_steps = K`` each step's loss is split into K micro-batches
  (contiguous slices of every point set), each back-propagated on its own by the kernel's step,
  so the autograd graph holds one K-th of the points. Every slice's squared residuals are
  divided by the size of the *whole* set, so the accumulated gradient is exactly the full-batch
  gradient, also for L-BFGS, whose closure replays the same K slices;
* evaluation and adaptive-sampler updates: residuals in chunks of ``residual_chunk`` points,
  forward passes on the test grid in chunks of ``eval_chunk`` points.

The task takes part in the run's hooks: ``pre_step`` lets the sampler update its points
(adaptive samplers get the residual magnitudes of their candidates), ``post_step`` adds the
per-term mean squared residuals (and the unknowns' values) to the step's metrics, and
``checkpoint``/``restore`` carry the sampler's state (its points, generator and counters) under
``"pinn_sampler"`` and the causal bin losses under ``"pinn_causal"``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, MutableMapping
from typing import Any, NamedTuple

import attrs
import torch
from torch import Tensor, nn

from phasetrain import hookimpl
from phasetrain.config import FieldValueError, non_negative, one_of, positive
from phasetrain.errors import BadInput, ConfigError

from .causal import CausalWeights
from .evaluation import Evaluation
from .network import ACTIVATIONS, PINNNet
from .problem_base import Condition

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _weights_valid(_instance: Any, attribute: attrs.Attribute, value: Mapping[str, float]) -> None:
    for name, weight in value.items():
        if not weight >= 0:
            raise FieldValueError(f"{attribute.name}.{name}", f"must be >= 0, got {weight!r}")


def _grid_valid(_instance: Any, attribute: attrs.Attribute, value: list[int]) -> None:
    if any(k < 2 for k in value):
        raise FieldValueError(attribute.name, f"needs at least 2 points per dimension, got {value!r}")


@attrs.define
class PINNOptions:
    """Options of the ``pinn`` task; the PDE is the run's ``[residual]``, the points its ``[sampler]``."""

    hidden: int = attrs.field(default=20, validator=positive)  # width of each hidden layer
    depth: int = attrs.field(default=8, validator=positive)  # hidden layers
    activation: str = attrs.field(default="tanh", validator=one_of(*ACTIVATIONS))
    # Factor on the first layer's initial weights (SIREN's w0 with activation = "sin"); 1: plain Glorot.
    first_layer_scale: float = attrs.field(default=1.0, validator=positive)
    # Random Fourier features of the normalised input fed to the MLP (2 per feature); 0: off.
    fourier_features: int = attrs.field(default=0, validator=non_negative)
    fourier_scale: float = attrs.field(default=1.0, validator=positive)  # std of the feature frequencies
    n_initial: int = attrs.field(default=256, validator=non_negative)  # per condition named initial*
    n_boundary: int = attrs.field(default=256, validator=non_negative)  # per other condition
    # Loss weight per term: "pde" and the problem's condition names; a term not listed weighs 1.
    weights: dict[str, float] = attrs.field(factory=dict, validator=_weights_valid)
    eval_grid: list[int] = attrs.field(factory=list, validator=_grid_valid)  # []: the problem's own
    eval_chunk: int = attrs.field(default=65_536, validator=positive)  # grid points per forward
    residual_chunk: int = attrs.field(default=8_192, validator=positive)  # points per residual pass
    dtype: str = attrs.field(default="float32", validator=one_of(*DTYPES))  # model and points
    # Build the residual's hard constraints into the network (exact periodicity, an initial
    # condition in the output); the conditions they satisfy leave the loss. Needs a residual with some.
    hard_constraints: bool = False
    periodic_modes: int = attrs.field(default=1, validator=positive)  # harmonics per periodic input
    # Causal weights of the PDE term over time bins (Wang et al. 2022); 0: off.
    causal_epsilon: float = attrs.field(default=0.0, validator=non_negative)
    causal_bins: int = attrs.field(default=32, validator=positive)


def derive_seed(seed: int, salt: str) -> int:
    """A 63-bit seed from the run seed and a purpose, so separate streams never coincide."""
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class PINNBatch(NamedTuple):
    """One micro-batch: a slice of the collocation points and of every condition's rows."""

    pde: Tensor  # (n, d)
    conditions: tuple[Tensor, ...]  # one (n_c, width_c) slice of rows per condition
    part: int  # which of the step's micro-batches: the first restarts the per-term metrics


class PINN(Evaluation):
    """Model, points, loss and evaluation of a PINN (see the module docstring)."""

    def __init__(self, options: PINNOptions, ctx: Any):
        self.options = o = options
        self.problem = problem = _required(ctx, "residual", 'use = "burgers"')
        self.sampler = _required(ctx, "sampler", 'use = "sobol"\nn = 10000')
        self.conditions = list(problem.conditions())
        self.terms = [Condition("pde", self.sampler.points, problem.residual), *self.conditions]
        self.names = [term.name for term in self.terms]
        unknown = sorted(set(o.weights) - set(self.names))
        if unknown:
            raise ConfigError(
                ctx.config.source, f"task.weights.{unknown[0]}",
                f"unknown loss term for {problem.name!r} (terms: {', '.join(self.names)})",
            )
        hard = set(_hard_conditions(problem, ctx) if o.hard_constraints else ())
        self.weights = [0.0 if name in hard else float(o.weights.get(name, 1.0)) for name in self.names]
        if len(o.eval_grid) not in (0, 1, problem.input_dim):
            raise ConfigError(
                ctx.config.source, "task.eval_grid",
                f"give one size, or one per input of {problem.name!r} ({', '.join(problem.input_names)}); "
                f"got {o.eval_grid!r}",
            )
        self.device = ctx.device
        net = PINNNet(
            problem.lower, problem.upper, problem.output_dim, o.hidden, o.depth, o.activation,
            first_layer_scale=o.first_layer_scale, fourier_features=o.fourier_features,
            fourier_scale=o.fourier_scale, unknowns=problem.unknowns,
            **({"periodic": problem.periodic_inputs, "periodic_modes": o.periodic_modes,
                "output": problem.hard_output} if o.hard_constraints else {}),
        )
        self.unknowns = net.unknowns
        problem.bind(self.unknowns)  # the residual reads the trainable coefficients from now on
        model = net.to(device=self.device, dtype=DTYPES[o.dtype])
        self.model: nn.Module = ctx.component("precision").prepare(model)
        # A precision policy may cast the model; points follow whatever dtype it ends up with.
        self.dtype = next(self.model.parameters()).dtype
        self.chunks = ctx.config.run.grad_accum_steps
        g = torch.Generator().manual_seed(derive_seed(ctx.seed, "pinn-conditions"))
        self.condition_points = [self._place(c.sample(self._count(c), g)) for c in self.conditions]
        self.causal = _causal(problem, o, ctx)
        self._set_points(self.sampler.points())
        self._grid: Tensor | None = None  # the test grid inside the domain, on demand
        self._exact: Tensor | None = None  # the exact solution on it, None without one
        self._terms: dict[str, Tensor] = {}  # last step's mean squared residual per term
        self.deferred: int | None = None  # first step of a predicted stretch: updates due in it wait

    def _count(self, condition: Condition) -> int:
        if condition.points:
            return condition.points
        return self.options.n_initial if condition.name.startswith("initial") else self.options.n_boundary

    def _place(self, points: Tensor) -> Tensor:
        return points.to(device=self.device, dtype=self.dtype)

    def _set_points(self, points: Tensor) -> None:
        self.points = self._place(points)
        if self.causal is not None:
            self.causal.assign(points)

    # -- training ---------------------------------------------------------------------------------

    def batch(self, index: int) -> PINNBatch:
        part = index % self.chunks
        if self.chunks == 1:
            return PINNBatch(self.points, tuple(self.condition_points), 0)
        return PINNBatch(
            torch.tensor_split(self.points, self.chunks)[part],
            tuple(torch.tensor_split(p, self.chunks)[part] for p in self.condition_points),
            part,
        )

    def loss(self, model: nn.Module, batch: PINNBatch) -> Tensor:
        """Weighted sum of the terms' squared residuals over this slice, per whole-set point."""
        total: Tensor | None = None
        pde, conditions, part = batch
        first = part == 0
        for term, weight, rows, whole in zip(
            self.terms, self.weights, (pde, *conditions), (self.points, *self.condition_points), strict=True
        ):
            if rows.shape[0] == 0 or weight == 0.0:
                continue
            squares = term.evaluate(model, rows).square().sum(dim=1)  # (m,)
            # Sum over the slice / size of the whole set; times K because the kernel divides
            # each of the K micro-batch losses by K.
            if term is self.terms[0] and self.causal is not None:
                where = torch.tensor_split(torch.arange(whole.shape[0]), self.chunks)[part]
                self.causal.record(squares, where, first)
                if part == self.chunks - 1:
                    self.causal.finish()
                mse = (squares * self.causal.factors(squares)[where.to(squares.device)]).sum() * self.chunks
            else:
                mse = squares.sum() * (self.chunks / whole.shape[0])
            value = mse.detach() / self.chunks
            self._terms[term.name] = value if first or term.name not in self._terms else self._terms[term.name] + value
            term_loss = mse if weight == 1.0 else weight * mse
            total = term_loss if total is None else total + term_loss
        if total is None:
            raise BadInput("the pinn task has no points to train on (sampler n and condition points are 0)")
        return total

    def forward_loss(self, model: nn.Module, batch: PINNBatch) -> Tensor:
        """The loss of ``batch`` with no parameter gradients (hybrid training's loss checks).

        Residuals need derivatives with respect to the inputs, so autograd stays on, but the
        parameters are taken out of the graph while it runs: cheaper, and nothing can reach
        their ``.grad``. The logged per-term values (and causal bin losses) of the last real
        step are kept.
        """
        params = [p for p in model.parameters() if p.requires_grad]
        terms = dict(self._terms)
        causal = None if self.causal is None else (self.causal.losses, self.causal._sums)
        try:
            for p in params:
                p.requires_grad_(False)
            with torch.enable_grad():
                return self.loss(model, batch).detach()
        finally:
            for p in params:
                p.requires_grad_(True)
            self._terms = terms
            if causal is not None:
                self.causal.losses, self.causal._sums = causal

    # -- evaluation -------------------------------------------------------------------------------

    def residual_magnitudes(self, model: nn.Module, points: Tensor) -> Tensor:
        """``|r(x)|`` (M,) float64 on CPU for points (M, d), in chunks, without parameter grads kept.

        Autograd is on (derivatives need it) but nothing is back-propagated to the model.
        """
        out = []
        with torch.enable_grad():
            for chunk in points.split(self.options.residual_chunk):
                r = self.terms[0].evaluate(model, self._place(chunk)).detach()
                out.append(r.reshape(r.shape[0], -1).norm(dim=1).to("cpu", torch.float64))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def export_model(self, model: nn.Module) -> nn.Module:
        """The model as saved: it already maps raw coordinates to the solution."""
        return model

    # -- hooks --------------------------------------------------------------------------------------

    @hookimpl
    def pre_step(self, trainer: Any, step: int) -> None:
        if not trainer.phase.real:
            # A predicted stretch is judged by loss checks on the current points: an update that
            # falls due now waits for the next real step.
            if self.deferred is None:
                self.deferred = step
            return
        model = trainer.model
        start, self.deferred = self.deferred, None
        for s in (step,) if start is None else range(start, step + 1):  # the first due one, once
            if self.sampler.update(s, lambda pool: self.residual_magnitudes(model, pool)):
                self._set_points(self.sampler.points())
                break
        if self.causal is not None:
            if self.causal.losses is None:  # nothing measured yet: measure the bins now
                squares = self.residual_magnitudes(model, self.points).square()
                self.causal.record(squares, slice(None), first=True)
                self.causal.finish()
            self.causal.update()

    @hookimpl
    def post_step(self, metrics: MutableMapping[str, Any]) -> None:
        for name, value in self._terms.items():
            metrics[f"mse_{name}"] = value
        if self.unknowns is not None:
            for name in self.unknowns.spec:
                metrics[f"coef_{name}"] = self.unknowns.value(name).detach()
        if self.causal is not None:
            metrics["causal_weight_min"] = float(self.causal.weights.min())

    @hookimpl
    def checkpoint(self, state: MutableMapping[str, Any]) -> None:
        state["pinn_sampler"] = self.sampler.state_dict()
        state["pinn_deferred"] = self.deferred
        if self.causal is not None:
            state["pinn_causal"] = self.causal.state_dict()

    @hookimpl
    def restore(self, state: Mapping[str, Any]) -> None:
        self.deferred = state.get("pinn_deferred")
        if "pinn_sampler" in state:
            try:
                self.sampler.load_state_dict(dict(state["pinn_sampler"]))
            except ValueError as exc:
                raise BadInput(f"cannot restore the sampler's points: {exc}") from None
            self._set_points(self.sampler.points())
        if self.causal is not None:
            self.causal.load_state_dict(dict(state.get("pinn_causal") or {}))


def _hard_conditions(problem: Any, ctx: Any) -> tuple[str, ...]:
    """The conditions ``task.hard_constraints`` satisfies; a config error if there are none."""
    if not problem.hard_conditions:
        raise ConfigError(ctx.config.source, "task.hard_constraints",
                          f"the residual {problem.name!r} declares no hard constraints")
    return tuple(problem.hard_conditions)


def _causal(problem: Any, options: PINNOptions, ctx: Any) -> CausalWeights | None:
    if options.causal_epsilon == 0:
        return None
    t = problem.time_dim
    if t is None:
        raise ConfigError(ctx.config.source, "task.causal_epsilon",
                          f"causal weights need a time input; {problem.name!r} has inputs {problem.input_names}")
    return CausalWeights(options.causal_epsilon, options.causal_bins, problem.lower[t], problem.upper[t], t)


def _required(ctx: Any, kind: str, example: str) -> Any:
    """The run's component of ``kind``; a clear error naming the missing section otherwise."""
    component = ctx.component(kind)
    if component is None:
        names = ", ".join(ctx.trainer.registry.names(kind)) or "none installed"
        raise ConfigError(
            ctx.config.source, kind,
            f"the pinn task needs a [{kind}] section, e.g. [{kind}] {example.replace(chr(10), ' ')} "
            f"(available: {names})",
        )
    return component
