"""Base classes shared by all PDE problems, plus evaluation helpers.

A :class:`Problem` describes a PDE on an axis-aligned box: the residual of the
governing equation, the initial/boundary :class:`Condition` objects, and an
exact (reference) solution.  Coordinates are always passed as one tensor
``x`` of shape ``(N, d)`` whose columns follow ``problem.input_names``; model
outputs ``u`` have shape ``(N, n_out)`` with columns ``problem.output_names``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .csg import SpaceTime
from .domain import sample_box, sample_faces, sample_slice
from .geometry import Box, Geometry
from .inverse import Unknown, Unknowns

__all__ = ["Condition", "Problem", "test_grid", "relative_l2"]


@dataclass(frozen=True)
class Condition:
    """One initial/boundary condition (or set of observations) of a problem.

    Attributes:
        name: identifier such as ``"initial"``, ``"boundary"`` or
            ``"initial_velocity"`` (unique within a problem).
        sample: ``sample(n, generator) -> (n, width)`` float64 CPU rows on the
            part of the domain where the condition lives (e.g. ``t = t_min``).
            A row holds ``group`` points, each its ``d`` coordinates followed by
            ``data`` numbers (an outward normal, a measured value): ``width =
            group * (d + data)``. A plain condition's rows are its points (n, d).
        residual: ``residual(x, u) -> (N, k)``, zero where the condition
            holds, or ``residual(x, u, data)`` when ``data > 0``.  ``x`` (N, d)
            may require grad (derivative conditions such as ``u_t(0, x) = 0``
            differentiate through it) and ``u = model(x)`` has shape (N, n_out).
            With ``group > 1`` the ``group`` points of a row are consecutive in
            ``x`` and the residual returns one row per group, (N / group, k).
        group: points per row that the residual sees together (2 for the
            pairs of a periodic condition). A row is never split, so chunking
            and gradient accumulation keep a group together by construction.
        data: numbers per point that follow its coordinates.
        points: rows to draw; 0 means the task's ``n_initial`` (names
            starting with ``"initial"``) or ``n_boundary``.
        noisy: the condition's data carry noise, so it does not hold exactly
            on the exact solution.
    """

    name: str
    sample: Callable[[int, torch.Generator], Tensor]
    residual: Callable[..., Tensor]
    group: int = 1
    data: int = 0
    points: int = 0
    noisy: bool = False

    def split(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Rows (m, width) -> the points (m * group, d) and their data (m * group, data)."""
        flat = rows.reshape(rows.shape[0] * self.group, rows.shape[1] // self.group)
        d = flat.shape[1] - self.data
        return flat[:, :d], flat[:, d:]

    def evaluate(self, u: Callable[[Tensor], Tensor], rows: Tensor) -> Tensor:
        """The residual (m, k) of the function ``u`` (a model, or an exact solution) on ``rows``."""
        points, data = self.split(rows)
        x = points.detach().requires_grad_(True)  # a fresh leaf: derivatives need it
        r = self.residual(x, u(x), data) if self.data else self.residual(x, u(x))
        if r.dim() == 1:
            r = r[:, None]
        if r.shape[0] != rows.shape[0]:
            raise ValueError(f"condition {self.name!r}: the residual has {r.shape[0]} rows for {rows.shape[0]} "
                             f"rows of {self.group} point(s)")
        return r


class Problem:
    """Base class of a PDE problem with a known exact or reference solution.

    Subclasses set the class attributes below, take their physical parameters
    as keyword-only constructor arguments (recorded in :attr:`params`) and
    implement :meth:`residual`, :meth:`conditions` and :meth:`exact`.

    Attributes:
        name: registry key, e.g. ``"burgers"``.
        input_names: coordinate columns of ``x``, e.g. ``("x", "t")``; time,
            when there is one, is the last column.
        output_names: columns of ``u``, e.g. ``("u",)``.
        lower, upper: box bounds, in ``input_names`` order (the bounding box
            of ``geometry`` and the time interval).
        geometry: the spatial domain (:mod:`.geometry`, :mod:`.csg`); ``None``
            is the box of the spatial columns of ``lower``/``upper``.
        default_grid: points per input dimension used by :func:`test_grid`
            (points outside a non-box domain are dropped).
        residual_tolerance: bound on ``max |residual(x, exact(x))|`` at random
            interior points in float64 (set per instance; scales with the
            problem's coefficients).
        reference: ``exact`` is a numerical reference solution (no autograd
            through it, so the kit does not check residuals on it).
        unknowns: coefficients to identify (an inverse problem), read in the
            residual with :meth:`coefficient` (see :mod:`.inverse`).
        periodic_inputs: input columns in which the solution is periodic over
            the box; with ``task.hard_constraints`` the network sees them only
            through ``cos``/``sin`` of the box period, so periodicity is exact.
        hard_conditions: conditions that ``task.hard_constraints`` satisfies
            exactly (through :meth:`hard_output` and the periodic inputs);
            they leave the training loss and are still reported.
    """

    name: ClassVar[str] = ""
    input_names: ClassVar[tuple[str, ...]] = ()
    output_names: ClassVar[tuple[str, ...]] = ()
    lower: ClassVar[tuple[float, ...]] = ()
    upper: ClassVar[tuple[float, ...]] = ()
    default_grid: ClassVar[tuple[int, ...]] = ()
    geometry: ClassVar[Geometry | None] = None
    residual_tolerance: float = 1e-9
    reference: ClassVar[bool] = False
    unknowns: Mapping[str, Unknown] = {}  # read-only; a problem with unknowns sets its own
    periodic_inputs: tuple[int, ...] = ()
    hard_conditions: tuple[str, ...] = ()
    _bound: Unknowns | None = None  # the trainable unknowns, once the task binds them

    def __init__(self, **params: Any) -> None:
        #: The keyword arguments this instance was built with (for logging/checkpoints).
        self.params: dict[str, Any] = dict(params)

    # ------------------------------------------------------------------ API
    def residual(self, x: Tensor, u: Tensor) -> Tensor:
        """PDE residual (N, k) at ``x`` (N, d, requires grad) for ``u = model(x)`` (N, n_out)."""
        raise NotImplementedError

    def conditions(self) -> list[Condition]:
        """Initial and boundary conditions of the problem."""
        raise NotImplementedError

    def exact(self, x: Tensor) -> Tensor:
        """Exact solution (N, n_out) at ``x`` (N, d), same dtype and device as ``x``."""
        raise NotImplementedError

    def hard_output(self, x: Tensor, raw: Tensor) -> Tensor:
        """The solution (N, n_out) built from the network's raw output (N, n_out) at ``x`` so that
        :attr:`hard_conditions` hold exactly (used with ``task.hard_constraints``); the identity
        by default."""
        return raw

    # ------------------------------------------------------------ unknowns
    def bind(self, unknowns: Unknowns | None) -> None:
        """Read :attr:`unknowns` from ``unknowns`` (the task's trainable ones) from now on."""
        self._bound = unknowns

    def coefficient(self, name: str) -> Tensor | float:
        """The current value of unknown ``name``: trainable once bound, the true value before."""
        if self._bound is not None:
            return self._bound.value(name)
        true = self.unknowns[name].true
        if true is None:
            raise ValueError(f"{self.name}: unknown {name!r} has no true value and is not bound to a model")
        return true

    # ------------------------------------------------------------ geometry
    @property
    def input_dim(self) -> int:
        """Number of input coordinates ``d``."""
        return len(self.input_names)

    @property
    def output_dim(self) -> int:
        """Number of output fields ``n_out``."""
        return len(self.output_names)

    @property
    def time_dim(self) -> int | None:
        """Column index of ``t`` in ``x``, or ``None`` for stationary problems."""
        return self.input_names.index("t") if "t" in self.input_names else None

    @property
    def spatial_dims(self) -> tuple[int, ...]:
        """Column indices of the space coordinates."""
        return tuple(i for i in range(self.input_dim) if i != self.time_dim)

    @functools.cached_property
    def domain(self) -> Geometry:
        """The whole domain: :attr:`geometry` (or the box), times the time interval if any."""
        if self.time_dim is not None and self.time_dim != self.input_dim - 1:
            raise ValueError(f"{self.name}: time must be the last input; got {self.input_names}")
        space = self.geometry
        if space is None:
            dims = list(self.spatial_dims)
            space = Box([self.lower[k] for k in dims], [self.upper[k] for k in dims])
        elif len(space.lower) != len(self.spatial_dims):
            raise ValueError(f"{self.name}: a {space.dim}-D geometry for spatial inputs {self.spatial_dims}")
        if self.time_dim is None:
            return space
        return SpaceTime(space, self.lower[self.time_dim], self.upper[self.time_dim])

    @property
    def is_box(self) -> bool:
        """Whether the domain is the whole box ``[lower, upper]``."""
        return self.geometry is None or isinstance(self.geometry, Box)

    def sample_interior(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` uniform points (n, d) float64 in the domain."""
        if self.is_box:
            return sample_box(self.lower, self.upper, n, generator)
        return self.domain.sample_interior(n, generator)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------- helpers for subclasses
    def _outputs(self, x: Tensor, u: Tensor) -> Tensor:
        """Check ``u`` against ``x`` and return it as (N, n_out) (accepts (N,) when n_out == 1)."""
        if u.dim() == 1 and self.output_dim == 1:
            u = u[:, None]
        if u.dim() != 2 or u.shape != (x.shape[0], self.output_dim):
            raise ValueError(
                f"{self.name}: expected u of shape ({x.shape[0]}, {self.output_dim}); got {tuple(u.shape)}"
            )
        return u

    def _initial_points(self, n: int, generator: torch.Generator) -> Tensor:
        """Points on the initial slice ``t = t_min`` -> (n, d)."""
        assert self.time_dim is not None, "stationary problems have no initial slice"
        if not self.is_box:
            return self.domain.sample_initial(n, generator)
        return sample_slice(self.lower, self.upper, self.time_dim, self.lower[self.time_dim], n, generator)

    def _boundary_points(self, n: int, generator: torch.Generator) -> Tensor:
        """Points on the spatial boundary (all times) -> (n, d)."""
        if not self.is_box:
            return self.domain.sample_boundary(n, generator)[0]
        return sample_faces(self.lower, self.upper, self.spatial_dims, n, generator)

    def _dirichlet_from_exact(self, name: str = "boundary") -> Condition:
        """Dirichlet condition ``u = exact`` on the spatial boundary."""

        def residual(x: Tensor, u: Tensor) -> Tensor:
            u = self._outputs(x, u)
            return u - self.exact(x.detach()).to(u.dtype)

        return Condition(name, self._boundary_points, residual)


def test_grid(problem: Problem, n_per_dim: int | Sequence[int] | None = None) -> Tensor:
    """Fixed tensor-product evaluation grid (M, d) float64 over the problem's box.

    On a domain that is not a box, the points outside it are part of the grid;
    ``problem.domain.inside(grid)`` picks the others.

    Args:
        problem: the problem whose box (``lower``/``upper``) is covered.
        n_per_dim: points per dimension (end points included): one int for all
            dimensions, one int per dimension in ``input_names`` order, or
            ``None`` for ``problem.default_grid`` (e.g. 256 x 100 for Burgers,
            31^3 = 29,791 for the 3-D elastic problem).

    Rows enumerate the grid in C order with the *last* input varying fastest,
    so ``grid.reshape(*shape, d)`` recovers the ``indexing="ij"`` mesh.
    """
    d = problem.input_dim
    if n_per_dim is None:
        shape = tuple(problem.default_grid) or (64,) * d
    elif isinstance(n_per_dim, int):
        shape = (n_per_dim,) * d
    else:
        shape = tuple(int(k) for k in n_per_dim)
    if len(shape) != d or any(k < 1 for k in shape):
        raise ValueError(f"need {d} positive grid sizes for {problem.name}; got {shape}")
    axes = [
        torch.linspace(lo, hi, k, dtype=torch.float64) for lo, hi, k in zip(problem.lower, problem.upper, shape)
    ]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


# ``test_grid`` is not a pytest test even when imported into a test module.
test_grid.__test__ = False  # type: ignore[attr-defined]


def _drop_singleton_column(t: Tensor) -> Tensor:
    """(N, 1) -> (N,); anything else unchanged."""
    return t[:, 0] if t.dim() == 2 and t.shape[1] == 1 else t


def relative_l2(pred: Tensor, exact: Tensor) -> float:
    """Relative L2 error ``||pred - exact||_2 / ||exact||_2`` over all entries, in float64.

    Shapes must match, except that (N,) and (N, 1) are interchangeable.
    Returns 0.0 when both are zero and ``inf`` when only ``exact`` is zero.
    """
    pred = torch.as_tensor(pred).detach()
    exact = torch.as_tensor(exact).detach()
    if pred.shape != exact.shape:
        # Tolerate a trailing singleton output column on either side, nothing else.
        p, e = _drop_singleton_column(pred), _drop_singleton_column(exact)
        if p.shape != e.shape:
            raise ValueError(f"shape mismatch: pred {tuple(pred.shape)} vs exact {tuple(exact.shape)}")
        pred, exact = p, e
    pred = pred.to(device="cpu", dtype=torch.float64)
    exact = exact.to(device="cpu", dtype=torch.float64)
    num = float(torch.linalg.vector_norm(pred - exact))
    den = float(torch.linalg.vector_norm(exact))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den
