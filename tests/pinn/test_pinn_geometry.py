"""Geometries: interior points inside, boundary points on the boundary with outward unit normals,
uniform in arc length; CSG keeps exactly the pieces of boundary that bound the result."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from phasetrain.plugins.pinn.csg import Difference, Intersection, SpaceTime, Union
from phasetrain.plugins.pinn.geometry import Annulus, Box, Disk, Interval, Polygon, Rectangle, l_shape

SETTINGS = settings(max_examples=5, deadline=None)

GEOMETRIES = {
    "interval": lambda: Interval(-1.0, 2.0),
    "rectangle": lambda: Rectangle((0.0, -1.0), (2.0, 0.5)),
    "box3d": lambda: Box((0.0, 0.0, 0.0), (1.0, 2.0, 0.5)),
    "disk": lambda: Disk((0.5, -0.5), 1.5),
    "annulus": lambda: Annulus((0.0, 0.0), 0.4, 1.0),
    "l-shape": l_shape,
    "triangle": lambda: Polygon([(0, 0), (0, 1), (2, 0)]),  # clockwise: stored counter-clockwise
    "union": lambda: Union(Disk((0.0, 0.0), 1.0), Rectangle((0.0, -0.5), (2.0, 0.5))),
    "difference": lambda: Difference(Rectangle((-1.0, -1.0), (1.0, 1.0)), Disk((0.0, 0.0), 0.5)),
    "intersection": lambda: Intersection(Disk((0.0, 0.0), 1.0), Rectangle((0.0, -2.0), (2.0, 2.0))),
    "nested": lambda: Difference(Union(Rectangle((0, 0), (2, 1)), Rectangle((0, 0), (1, 2))), Disk((0.5, 0.5), 0.25)),
    "space-time": lambda: SpaceTime(Annulus((0.0, 0.0), 0.5, 1.0), 0.0, 2.0),
}


def _distance_to_boundary(name: str, x: torch.Tensor) -> torch.Tensor:
    """Independent distance of each point to the geometry's boundary pieces (closed forms)."""
    r = lambda c: torch.linalg.vector_norm(x[:, :2] - torch.tensor(c, dtype=torch.float64), dim=1)  # noqa: E731
    if name == "disk":
        return (r((0.5, -0.5)) - 1.5).abs()
    if name in ("annulus", "space-time"):
        return torch.minimum((r((0.0, 0.0)) - 0.5 if name == "space-time" else r((0.0, 0.0)) - 0.4).abs(),
                             (r((0.0, 0.0)) - 1.0).abs())
    if name == "difference":
        square = torch.minimum((x[:, 0].abs() - 1).abs(), (x[:, 1].abs() - 1).abs())
        return torch.minimum(square, (r((0.0, 0.0)) - 0.5).abs())
    raise KeyError(name)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 300))
def test_samples_lie_inside_and_on_the_boundary_with_outward_unit_normals(name, seed, n):
    geometry = GEOMETRIES[name]()
    g = torch.Generator().manual_seed(seed)
    interior = geometry.sample_interior(n, g)
    points, normals = geometry.sample_boundary(n, g)
    assert interior.shape == points.shape == normals.shape == (n, geometry.dim)
    assert bool(geometry.inside(interior).all())
    assert bool(geometry.on_boundary(points).all()) and bool(geometry.inside(points).all())
    assert float((torch.linalg.vector_norm(normals, dim=1) - 1).abs().max()) < 1e-12
    lo, hi = torch.tensor(geometry.lower), torch.tensor(geometry.upper)
    assert bool(((interior >= lo - 1e-12) & (interior <= hi + 1e-12)).all())
    if name in ("disk", "annulus", "difference", "space-time"):
        assert float(_distance_to_boundary(name, points).max()) < 1e-6
    # Outward: a small step against the normal goes into the region, one along it leaves it
    # (checked wherever the first holds: it fails only within a step of a corner).
    step = 1e-4
    inner, outer = points - step * normals, points + step * normals
    clear = geometry.inside(inner) & ~geometry.on_boundary(inner)
    assert bool((~geometry.inside(outer[clear])).all())
    assert int((~clear).sum()) <= max(1, n // 100)
    again = GEOMETRIES[name]().sample_boundary(n, torch.Generator().manual_seed(seed))
    assert torch.equal(GEOMETRIES[name]().sample_boundary(n, torch.Generator().manual_seed(seed))[0], again[0])


def _edge_fractions(points: torch.Tensor, polygon: Polygon) -> torch.Tensor:
    return torch.bincount(polygon._edge_distance(points).argmin(dim=1), minlength=polygon.length.numel()).double()


def test_boundary_points_are_uniform_in_arc_length():
    g = torch.Generator().manual_seed(0)
    n = 20_000
    polygon = l_shape()
    expected = polygon.length / polygon.length.sum()
    for geometry in (polygon, Difference(Rectangle((-1, -1), (1, 1)), Rectangle((0, 0), (1, 1)))):
        counts = _edge_fractions(geometry.sample_boundary(n, g)[0], polygon) / n
        torch.testing.assert_close(counts, expected, atol=0.012, rtol=0)  # ~4 standard errors
    ring = Annulus((0, 0), 0.25, 1.0)
    outer = (torch.linalg.vector_norm(ring.sample_boundary(n, g)[0], dim=1) > 0.5).double().mean()
    assert abs(float(outer) - 1.0 / 1.25) < 0.012
    angles = torch.atan2(*Disk((0, 0), 2.0).sample_boundary(n, g)[0].T.flip(0))
    assert float(torch.histc(angles, bins=8, min=-math.pi, max=math.pi).div(n).sub(1 / 8).abs().max()) < 0.012


def test_interior_points_are_uniform_in_area():
    g = torch.Generator().manual_seed(1)
    n = 20_000
    disk = Disk((0, 0), 1.0)
    inner = (torch.linalg.vector_norm(disk.sample_interior(n, g), dim=1) < 0.5).double().mean()
    assert abs(float(inner) - 0.25) < 0.012
    ring = Annulus((0, 0), 0.5, 1.0)
    r = torch.linalg.vector_norm(ring.sample_interior(n, g), dim=1)
    assert abs(float((r < 0.75).double().mean()) - (0.75**2 - 0.25) / 0.75) < 0.012
    quadrant = l_shape().sample_interior(n, g)
    assert abs(float((quadrant[:, 0] < 0).double().mean()) - 2 / 3) < 0.01  # two of the L's three squares


def test_csg_drops_shared_and_hair_edges_and_flips_the_normals_of_holes():
    g = torch.Generator().manual_seed(2)
    # Two squares side by side: the edge they share is inside the union.
    pair = Union(Rectangle((0, 0), (1, 1)), Rectangle((1, 0), (2, 1)))
    points, _ = pair.sample_boundary(4000, g)
    middle = (points[:, 0] - 1).abs() < 1e-12
    assert not bool((middle & (points[:, 1] > 1e-9) & (points[:, 1] < 1 - 1e-9)).any())
    assert abs(pair.boundary_measure() - 6.0) < 0.05
    assert bool(pair.inside(torch.tensor([[1.0, 0.5]], dtype=torch.float64)).all())
    # The L as a difference: the small square's edges on the big square's boundary are not boundary.
    ell = Difference(Rectangle((-1, -1), (1, 1)), Rectangle((0, 0), (1, 1)))
    hair = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    assert not bool(ell.on_boundary(hair).any()) and not bool(ell.inside(hair).any())
    corner = torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64)  # the re-entrant edges
    assert bool(ell.on_boundary(corner).all())
    torch.testing.assert_close(ell.normal(corner), torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    assert abs(ell.boundary_measure() - 8.0) < 0.1
    # A hole's normals point into the hole (out of the region).
    holed = Difference(Rectangle((-1, -1), (1, 1)), Disk((0, 0), 0.5))
    points, normals = holed.sample_boundary(2000, g)
    on_hole = torch.linalg.vector_norm(points, dim=1) < 0.75
    torch.testing.assert_close(normals[on_hole], -points[on_hole] / 0.5)


def test_bad_geometries_are_refused():
    with pytest.raises(ValueError, match="lower < upper"):
        Box((0.0, 1.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="0 < inner < outer"):
        Annulus((0, 0), 1.0, 0.5)
    with pytest.raises(ValueError, match="no area"):
        Polygon([(0, 0), (1, 1), (2, 2)])
    with pytest.raises(ValueError, match="do not overlap"):
        Intersection(Rectangle((0, 0), (1, 1)), Rectangle((2, 2), (3, 3)))


@pytest.mark.parametrize("sampler", ["uniform", "sobol", "lhs", "rad", "rar-d"])
def test_every_sampler_stays_inside_any_geometry_through_its_updates(sampler):
    from phasetrain.plugins.pinn.samplers import SAMPLERS

    field = lambda x: torch.exp(-10 * (x**2).sum(dim=1))  # noqa: E731  (a residual peaked at the origin)
    options = {"rad": {"every": 1, "pool_factor": 2.0}, "rar-d": {"every": 1, "add": 7, "pool_factor": 2.0},
               **{static: {"resample_every": 1} for static in ("uniform", "sobol", "lhs")}}
    for name in ("annulus", "difference", "nested", "space-time"):
        region = GEOMETRIES[name]()
        made = SAMPLERS[sampler](region.lower, region.upper, 50, 7, region=region, **options.get(sampler, {}))
        again = SAMPLERS[sampler](region.lower, region.upper, 50, 7, region=region, **options.get(sampler, {}))
        assert made.points().shape == (50, region.dim)
        for step in range(1, 4):
            made.update(step, field), again.update(step, field)
            assert bool(region.inside(made.points()).all()), (name, step)
        assert made.points().shape[0] >= 50 and torch.equal(made.points(), again.points())
