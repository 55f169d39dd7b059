"""Spatial domains beyond boxes: interval, box, disk, annulus and polygon, each with interior and
boundary samplers (see :mod:`.csg` for unions, differences, intersections and space-time).

A :class:`Geometry` is a closed region of R^d. It answers ``inside(x)`` (boundary included),
``on_boundary(x)`` and ``normal(x)`` (the outward unit normal of the nearest piece of boundary),
and draws reproducible float64 points from a ``torch.Generator``:

* ``sample_interior(n, g) -> (n, d)``: uniform in the region (directly for boxes, disks and
  annuli, by rejection from the bounding box otherwise);
* ``sample_boundary(n, g) -> (points (n, d), normals (n, d))``: uniform in arc length (in surface
  measure for boxes in more dimensions), with the outward unit normal at each point.

``lower`` and ``upper`` are the bounding box; a PINN's network normalises its inputs by it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["Geometry", "Interval", "Box", "Rectangle", "Disk", "Annulus", "Polygon", "l_shape", "rejection"]

#: Boundary tests accept points this close to the boundary, relative to the bounding box's size.
RELATIVE_TOLERANCE = 1e-9


def rejection(draw: Callable[[int], Tensor], keep: Callable[[Tensor], Tensor], n: int, what: str) -> Tensor:
    """``n`` rows of ``draw(m)`` that pass ``keep``, in the order drawn (reproducible: the batch
    sizes depend only on what was accepted so far)."""
    if n == 0:
        return draw(0)
    parts, have, tried, accepted = [], 0, 0, 0
    while have < n:
        rate = max(accepted / tried, 0.01) if tried else 0.5
        m = max(64, math.ceil(1.2 * (n - have) / rate))
        candidates = draw(m)
        kept = candidates[keep(candidates)]
        parts.append(kept)
        have, tried, accepted = have + kept.shape[0], tried + m, accepted + kept.shape[0]
        if tried > 10_000 * max(n, 64) and accepted == 0:
            raise ValueError(f"{what}: no point of {tried} candidates was accepted (an empty region?)")
    return torch.cat(parts)[:n]


class Geometry:
    """A closed region of R^d (see the module docstring)."""

    dim: int
    lower: tuple[float, ...]
    upper: tuple[float, ...]

    # -- queries -------------------------------------------------------------------------------

    @property
    def tolerance(self) -> float:
        return RELATIVE_TOLERANCE * max(1.0, *(abs(v) for v in (*self.lower, *self.upper)))

    def inside(self, x: Tensor) -> Tensor:
        """(N,) bool: ``x`` (N, d) lies in the closed region."""
        raise NotImplementedError

    def on_boundary(self, x: Tensor) -> Tensor:
        """(N,) bool: ``x`` (N, d) lies on the boundary (within :attr:`tolerance`)."""
        raise NotImplementedError

    def normal(self, x: Tensor) -> Tensor:
        """(N, d) outward unit normal of the piece of boundary nearest to each point."""
        raise NotImplementedError

    def strictly_inside(self, x: Tensor) -> Tensor:
        """(N,) bool: in the region and not on its boundary."""
        return self.inside(x) & ~self.on_boundary(x)

    def boundary_measure(self) -> float:
        """Length (area, or number of end points for an interval) of the boundary."""
        raise NotImplementedError

    # -- sampling ------------------------------------------------------------------------------

    def sample_interior(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` uniform points (n, d) in the region (by rejection from the bounding box)."""
        lo = torch.tensor(self.lower, dtype=torch.float64)
        hi = torch.tensor(self.upper, dtype=torch.float64)

        def draw(m: int) -> Tensor:
            return lo + (hi - lo) * torch.rand(m, self.dim, generator=generator, dtype=torch.float64)

        return rejection(draw, self.inside, n, f"{self!r}.sample_interior").reshape(n, self.dim)

    def sample_boundary(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` points (n, d) uniform on the boundary and their outward unit normals (n, d)."""
        raise NotImplementedError

    def _check(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{self!r} takes points of shape (N, {self.dim}); got {tuple(x.shape)}")
        return x


def _pieces(measures: Sequence[float], n: int, generator: torch.Generator) -> Tensor:
    """Which of several boundary pieces each of ``n`` points lies on, with probability ∝ measure."""
    weights = torch.tensor(measures, dtype=torch.float64)
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.multinomial(weights / weights.sum(), n, replacement=True, generator=generator)


class Box(Geometry):
    """The axis-aligned box ``[lower_0, upper_0] x ... x [lower_{d-1}, upper_{d-1}]``."""

    def __init__(self, lower: Sequence[float], upper: Sequence[float]) -> None:
        lo, hi = tuple(float(v) for v in lower), tuple(float(v) for v in upper)
        if not lo or len(lo) != len(hi) or not all(a < b for a, b in zip(lo, hi, strict=True)):
            raise ValueError(f"a box needs lower < upper in every dimension; got {list(lo)}, {list(hi)}")
        self.lower, self.upper, self.dim = lo, hi, len(lo)
        self._lo, self._hi = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"Box({list(self.lower)}, {list(self.upper)})"

    def inside(self, x: Tensor) -> Tensor:
        x, tol = self._check(x).to(torch.float64), self.tolerance
        return ((x >= self._lo - tol) & (x <= self._hi + tol)).all(dim=1)

    def _face_distance(self, x: Tensor) -> Tensor:
        x = self._check(x).to(torch.float64)
        return torch.cat([(x - self._lo).abs(), (x - self._hi).abs()], dim=1)  # (N, 2d): lower faces, upper

    def on_boundary(self, x: Tensor) -> Tensor:
        return self.inside(x) & (self._face_distance(x).min(dim=1).values <= self.tolerance)

    def normal(self, x: Tensor) -> Tensor:
        face = self._face_distance(x).argmin(dim=1)  # (N,)
        out = torch.zeros(x.shape[0], self.dim, dtype=torch.float64)
        out[torch.arange(x.shape[0]), face % self.dim] = torch.where(face < self.dim, -1.0, 1.0).to(torch.float64)
        return out

    def _face_measures(self) -> list[float]:
        extent = [b - a for a, b in zip(self.lower, self.upper, strict=True)]
        return [math.prod(e for j, e in enumerate(extent) if j != k) for k in range(self.dim)]

    def boundary_measure(self) -> float:
        return 2 * sum(self._face_measures())

    def sample_interior(self, n: int, generator: torch.Generator) -> Tensor:
        return self._lo + (self._hi - self._lo) * torch.rand(n, self.dim, generator=generator, dtype=torch.float64)

    def sample_boundary(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        measures = self._face_measures()
        face = _pieces([m for m in measures for _side in (0, 1)], n, generator)  # 2k: lower, 2k+1: upper
        points = self.sample_interior(n, generator)
        column, upper = face // 2, (face % 2).bool()
        rows = torch.arange(n)
        points[rows, column] = torch.where(upper, self._hi[column], self._lo[column])
        normals = torch.zeros(n, self.dim, dtype=torch.float64)
        normals[rows, column] = torch.where(upper, 1.0, -1.0).to(torch.float64)
        return points, normals


class Interval(Box):
    """``[a, b]``; its boundary is the two end points, each drawn with probability 1/2."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__((a,), (b,))

    def __repr__(self) -> str:
        return f"Interval({self.lower[0]}, {self.upper[0]})"


def Rectangle(lower: Sequence[float], upper: Sequence[float]) -> Box:  # noqa: N802 (reads as a class)
    """The rectangle ``[x0, x1] x [y0, y1]`` given as ``(x0, y0)``, ``(x1, y1)``."""
    if len(lower) != 2 or len(upper) != 2:
        raise ValueError(f"a rectangle has two coordinates per corner; got {list(lower)}, {list(upper)}")
    return Box(lower, upper)


class Disk(Geometry):
    """The closed disk of ``radius`` around ``center``."""

    dim = 2

    def __init__(self, center: Sequence[float], radius: float) -> None:
        if len(center) != 2 or not radius > 0:
            raise ValueError(f"a disk needs a 2-D center and a positive radius; got {list(center)}, {radius}")
        self.center, self.radius = torch.tensor([float(c) for c in center], dtype=torch.float64), float(radius)
        self.lower = tuple(float(c) - self.radius for c in center)
        self.upper = tuple(float(c) + self.radius for c in center)

    def __repr__(self) -> str:
        return f"Disk({self.center.tolist()}, {self.radius})"

    def _radius(self, x: Tensor) -> Tensor:
        return torch.linalg.vector_norm(self._check(x).to(torch.float64) - self.center, dim=1)

    def inside(self, x: Tensor) -> Tensor:
        return self._radius(x) <= self.radius + self.tolerance

    def on_boundary(self, x: Tensor) -> Tensor:
        return (self._radius(x) - self.radius).abs() <= self.tolerance

    def normal(self, x: Tensor) -> Tensor:
        offset = self._check(x).to(torch.float64) - self.center
        return offset / torch.linalg.vector_norm(offset, dim=1, keepdim=True).clamp_min(1e-300)

    def boundary_measure(self) -> float:
        return 2 * math.pi * self.radius

    def _polar(self, r: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        direction = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
        return self.center + r[:, None] * direction, direction

    def sample_interior(self, n: int, generator: torch.Generator) -> Tensor:
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        return self._polar(self.radius * u[:, 0].sqrt(), 2 * math.pi * u[:, 1])[0]  # sqrt: uniform in area

    def sample_boundary(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        return self._polar(torch.full((n,), self.radius, dtype=torch.float64), theta)


class Annulus(Disk):
    """The closed ring ``inner <= |x - center| <= outer``."""

    def __init__(self, center: Sequence[float], inner: float, outer: float) -> None:
        super().__init__(center, outer)
        if not 0 < inner < outer:
            raise ValueError(f"an annulus needs 0 < inner < outer; got {inner}, {outer}")
        self.inner = float(inner)

    def __repr__(self) -> str:
        return f"Annulus({self.center.tolist()}, {self.inner}, {self.radius})"

    def inside(self, x: Tensor) -> Tensor:
        r, tol = self._radius(x), self.tolerance
        return (r >= self.inner - tol) & (r <= self.radius + tol)

    def on_boundary(self, x: Tensor) -> Tensor:
        r, tol = self._radius(x), self.tolerance
        return ((r - self.radius).abs() <= tol) | ((r - self.inner).abs() <= tol)

    def normal(self, x: Tensor) -> Tensor:
        r = self._radius(x)
        inward = (r - self.inner).abs() < (r - self.radius).abs()  # nearer the hole: the normal points in
        return torch.where(inward[:, None], -super().normal(x), super().normal(x))

    def boundary_measure(self) -> float:
        return 2 * math.pi * (self.inner + self.radius)

    def sample_interior(self, n: int, generator: torch.Generator) -> Tensor:
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        r = (self.inner**2 + u[:, 0] * (self.radius**2 - self.inner**2)).sqrt()
        return self._polar(r, 2 * math.pi * u[:, 1])[0]

    def sample_boundary(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        outer = _pieces([self.inner, self.radius], n, generator).bool()  # circles by circumference
        theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        r = torch.where(outer, torch.tensor(self.radius, dtype=torch.float64), torch.tensor(self.inner, dtype=torch.float64))
        points, direction = self._polar(r, theta)
        return points, torch.where(outer[:, None], direction, -direction)


class Polygon(Geometry):
    """A simple polygon given by its vertices in order (either orientation; stored counter-clockwise)."""

    dim = 2

    def __init__(self, vertices: Sequence[Sequence[float]]) -> None:
        v = torch.tensor([[float(a), float(b)] for a, b in vertices], dtype=torch.float64)
        if v.shape[0] < 3:
            raise ValueError(f"a polygon needs at least 3 vertices; got {v.shape[0]}")
        nxt = v.roll(-1, dims=0)
        area = 0.5 * float((v[:, 0] * nxt[:, 1] - nxt[:, 0] * v[:, 1]).sum())
        if abs(area) < 1e-14:
            raise ValueError("the polygon's vertices enclose no area")
        self.vertices = v if area > 0 else v.flip(0)  # counter-clockwise: the outside is on the right
        self.start, self.edge = self.vertices, self.vertices.roll(-1, dims=0) - self.vertices  # (E, 2)
        self.length = torch.linalg.vector_norm(self.edge, dim=1)  # (E,)
        if bool((self.length == 0).any()):
            raise ValueError("the polygon repeats a vertex")
        self.outward = torch.stack([self.edge[:, 1], -self.edge[:, 0]], dim=1) / self.length[:, None]
        self.lower = tuple(self.vertices.min(dim=0).values.tolist())
        self.upper = tuple(self.vertices.max(dim=0).values.tolist())

    def __repr__(self) -> str:
        return f"Polygon({self.vertices.tolist()})"

    def _edge_distance(self, x: Tensor) -> Tensor:
        """(N, E) distance from each point to each edge (segment)."""
        x = self._check(x).to(torch.float64)
        rel = x[:, None, :] - self.start[None]  # (N, E, 2)
        s = ((rel * self.edge[None]).sum(-1) / self.length**2).clamp(0.0, 1.0)  # (N, E)
        return torch.linalg.vector_norm(rel - s[..., None] * self.edge[None], dim=-1)

    def inside(self, x: Tensor) -> Tensor:
        x = self._check(x).to(torch.float64)
        a, b = self.start, self.start + self.edge  # (E, 2)
        crosses = (a[:, 1] > x[:, None, 1]) != (b[:, 1] > x[:, None, 1])  # (N, E): the edge spans y
        with torch.no_grad():
            t = (x[:, None, 1] - a[:, 1]) / torch.where(b[:, 1] == a[:, 1], 1.0, b[:, 1] - a[:, 1])
            left = x[:, None, 0] < a[:, 0] + t * (b[:, 0] - a[:, 0])
        odd = (crosses & left).sum(dim=1) % 2 == 1  # even-odd rule
        return odd | self.on_boundary(x)

    def on_boundary(self, x: Tensor) -> Tensor:
        return self._edge_distance(x).min(dim=1).values <= self.tolerance

    def normal(self, x: Tensor) -> Tensor:
        return self.outward[self._edge_distance(x).argmin(dim=1)]

    def boundary_measure(self) -> float:
        return float(self.length.sum())

    def sample_boundary(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        edge = _pieces(self.length.tolist(), n, generator)
        s = torch.rand(n, generator=generator, dtype=torch.float64)
        return self.start[edge] + s[:, None] * self.edge[edge], self.outward[edge].clone()


def l_shape() -> Polygon:
    """The L-shaped domain ``[-1, 1]^2 \\ (0, 1]^2`` (re-entrant corner at the origin)."""
    return Polygon([(-1, -1), (1, -1), (1, 0), (0, 0), (0, 1), (-1, 1)])
