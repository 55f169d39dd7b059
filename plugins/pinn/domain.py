"""Random sampling on axis-aligned boxes and on parts of their boundary.

Problems in :mod:`phasetrain.plugins.pinn.problems` live on boxes
``[lower_0, upper_0] x ... x [lower_{d-1}, upper_{d-1}]`` whose columns follow
the problem's ``input_names`` (space coordinates and possibly time).  Initial
conditions live on the slice ``t = t_min`` and boundary conditions on the
spatial faces ``x_k = lower_k`` / ``x_k = upper_k``.  These helpers draw such
points reproducibly from a ``torch.Generator``; all results are float64 on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["as_bounds", "sample_box", "sample_slice", "sample_faces"]


def as_bounds(lower: Sequence[float], upper: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Validate box bounds and return them as float64 tensors (d,), (d,)."""
    lo = torch.as_tensor(lower, dtype=torch.float64).reshape(-1)
    hi = torch.as_tensor(upper, dtype=torch.float64).reshape(-1)
    if lo.numel() == 0 or lo.shape != hi.shape:
        raise ValueError(f"lower and upper must be non-empty and of equal length; got {list(lower)}, {list(upper)}")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()) or not bool((lo < hi).all()):
        raise ValueError(f"need finite bounds with lower < upper in every dimension; got {list(lower)}, {list(upper)}")
    return lo, hi


def sample_box(lower: Sequence[float], upper: Sequence[float], n: int, generator: torch.Generator) -> Tensor:
    """``n`` i.i.d. uniform points in the box -> (n, d) float64."""
    lo, hi = as_bounds(lower, upper)
    unit = torch.rand(n, lo.numel(), generator=generator, dtype=torch.float64)  # (n, d) in [0, 1)
    return lo + (hi - lo) * unit


def sample_slice(
    lower: Sequence[float], upper: Sequence[float], dim: int, value: float, n: int, generator: torch.Generator
) -> Tensor:
    """``n`` uniform points of the box with column ``dim`` fixed to ``value`` -> (n, d).

    Used for initial conditions (``dim`` = time column, ``value`` = t_min).
    """
    points = sample_box(lower, upper, n, generator)
    points[:, dim] = value
    return points


def sample_faces(
    lower: Sequence[float], upper: Sequence[float], dims: Sequence[int], n: int, generator: torch.Generator
) -> Tensor:
    """``n`` points uniformly distributed over the faces ``x_k = lower_k`` or ``upper_k``, ``k in dims`` -> (n, d).

    A face is chosen with probability proportional to its measure (the product
    of the extents of all other columns, including time), then a uniform point
    on it is drawn.  For ``dims`` = the spatial columns this samples the
    space-time lateral boundary, where Dirichlet boundary conditions live.
    """
    lo, hi = as_bounds(lower, upper)
    dims = [int(k) for k in dims]
    if not dims:
        raise ValueError("sample_faces needs at least one dimension")
    extent = hi - lo  # (d,)
    # Measure of the face orthogonal to column k = prod_{j != k} extent_j (1 in 1-D).
    measures = torch.stack([torch.prod(extent[[j for j in range(lo.numel()) if j != k]]) for k in dims])
    # Each of the 2 * len(dims) faces (lower/upper side of each column) gets measure/2 each.
    face_prob = (measures / measures.sum()).repeat_interleave(2) / 2  # (2 * len(dims),)
    if n == 0:
        return torch.empty(0, lo.numel(), dtype=torch.float64)
    face = torch.multinomial(face_prob, n, replacement=True, generator=generator)  # (n,)
    points = sample_box(lower, upper, n, generator)
    dims_t = torch.tensor(dims, dtype=torch.long)
    column = dims_t[face // 2]  # column fixed for each point
    on_upper = (face % 2).bool()
    value = torch.where(on_upper, hi[column], lo[column])
    points[torch.arange(n), column] = value
    return points
