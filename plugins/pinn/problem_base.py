"""Base classes shared by all PDE problems, plus evaluation helpers.

A :class:`Problem` describes a PDE on an axis-aligned box: the residual of the
governing equation, the initial/boundary :class:`Condition` objects, and an
exact (reference) solution.  Coordinates are always passed as one tensor
``x`` of shape ``(N, d)`` whose columns follow ``problem.input_names``; model
outputs ``u`` have shape ``(N, n_out)`` with columns ``problem.output_names``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .domain import sample_box, sample_faces, sample_slice

__all__ = ["Condition", "Problem", "test_grid", "relative_l2"]


@dataclass(frozen=True)
class Condition:
    """One initial/boundary condition of a problem.

    Attributes:
        name: identifier such as ``"initial"``, ``"boundary"`` or
            ``"initial_velocity"`` (unique within a problem).
        sample: ``sample(n, generator) -> (n, d)`` float64 CPU points on the
            part of the domain where the condition lives (e.g. ``t = t_min``).
        residual: ``residual(x, u) -> (N, k)``, zero where the condition
            holds.  ``x`` (N, d) may require grad (derivative conditions such
            as ``u_t(0, x) = 0`` differentiate through it) and ``u = model(x)``
            has shape (N, n_out).
    """

    name: str
    sample: Callable[[int, torch.Generator], Tensor]
    residual: Callable[[Tensor, Tensor], Tensor]


class Problem:
    """Base class of a PDE problem on a box domain with a known exact solution.

    Subclasses set the class attributes below, take their physical parameters
    as keyword-only constructor arguments (recorded in :attr:`params`) and
    implement :meth:`residual`, :meth:`conditions` and :meth:`exact`.

    Attributes:
        name: registry key, e.g. ``"burgers"``.
        input_names: coordinate columns of ``x``, e.g. ``("x", "t")``.
        output_names: columns of ``u``, e.g. ``("u",)``.
        lower, upper: box bounds, in ``input_names`` order.
        default_grid: points per input dimension used by :func:`test_grid`.
        residual_tolerance: bound on ``max |residual(x, exact(x))|`` at random
            interior points in float64 (set per instance; scales with the
            problem's coefficients).
    """

    name: ClassVar[str] = ""
    input_names: ClassVar[tuple[str, ...]] = ()
    output_names: ClassVar[tuple[str, ...]] = ()
    lower: ClassVar[tuple[float, ...]] = ()
    upper: ClassVar[tuple[float, ...]] = ()
    default_grid: ClassVar[tuple[int, ...]] = ()
    residual_tolerance: float = 1e-9

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

    def sample_interior(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` uniform points (n, d) float64 in the box."""
        return sample_box(self.lower, self.upper, n, generator)

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
        return sample_slice(self.lower, self.upper, self.time_dim, self.lower[self.time_dim], n, generator)

    def _boundary_points(self, n: int, generator: torch.Generator) -> Tensor:
        """Points on the spatial boundary (all times) -> (n, d)."""
        return sample_faces(self.lower, self.upper, self.spatial_dims, n, generator)

    def _dirichlet_from_exact(self, name: str = "boundary") -> Condition:
        """Dirichlet condition ``u = exact`` on the spatial boundary."""

        def residual(x: Tensor, u: Tensor) -> Tensor:
            u = self._outputs(x, u)
            return u - self.exact(x.detach()).to(u.dtype)

        return Condition(name, self._boundary_points, residual)


def test_grid(problem: Problem, n_per_dim: int | Sequence[int] | None = None) -> Tensor:
    """Fixed tensor-product evaluation grid (M, d) float64 over the problem's box.

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
