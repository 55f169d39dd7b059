"""Physics-informed neural network (PINN) support: the pure math layer.

* :mod:`.derivatives` -- autograd helpers (``gradient``, ``partial``,
  ``laplacian``, ``divergence``, the memoising ``Derivatives``).
* :mod:`.problems` -- PDE benchmark problems with exact solutions
  (``PROBLEMS`` registry, ``Condition``, ``Problem``, ``test_grid``,
  ``relative_l2``).
* :mod:`.samplers` -- collocation samplers (``SAMPLERS`` registry: uniform,
  Sobol, Latin hypercube, RAD, RAR-D), on a box or any geometry.
* :mod:`.geometry`, :mod:`.csg` -- interval, box, disk, annulus, polygon, CSG
  union/difference/intersection and space-time domains, with interior and
  boundary samplers (boundary points carry outward unit normals).
* :mod:`.conditions` -- Dirichlet, Neumann, Robin, periodic, initial (with
  time derivatives) and observation conditions.
* :mod:`.inverse` -- unknown coefficients (``Unknown``) of inverse problems.

Nothing here knows about the trainer; it only depends on torch and numpy.
"""

from __future__ import annotations

from .conditions import dirichlet, initial, neumann, observations, periodic, robin
from .csg import Difference, Intersection, SpaceTime, Union
from .derivatives import Derivatives, divergence, gradient, laplacian, partial
from .geometry import Annulus, Box, Disk, Geometry, Interval, Polygon, Rectangle, l_shape
from .inverse import Unknown
from .problems import (
    PROBLEMS,
    AllenCahn,
    Burgers1D,
    BurgersInverse,
    Condition,
    Elastic2D,
    Heat1D,
    Helmholtz2D,
    Poisson2D,
    PoissonLShape,
    Problem,
    Wave1D,
    relative_l2,
    test_grid,
)
from .samplers import (
    SAMPLERS,
    LHSSampler,
    RADSampler,
    RARDSampler,
    Sampler,
    SobolSampler,
    UniformSampler,
    residual_density,
)

__all__ = [
    "Derivatives",
    "gradient",
    "partial",
    "laplacian",
    "divergence",
    "Condition",
    "Problem",
    "Burgers1D",
    "Poisson2D",
    "Heat1D",
    "Wave1D",
    "Elastic2D",
    "Helmholtz2D",
    "BurgersInverse",
    "AllenCahn",
    "PoissonLShape",
    "Geometry",
    "Interval",
    "Box",
    "Rectangle",
    "Disk",
    "Annulus",
    "Polygon",
    "l_shape",
    "Union",
    "Difference",
    "Intersection",
    "SpaceTime",
    "dirichlet",
    "neumann",
    "robin",
    "periodic",
    "initial",
    "observations",
    "Unknown",
    "PROBLEMS",
    "test_grid",
    "relative_l2",
    "Sampler",
    "UniformSampler",
    "SobolSampler",
    "LHSSampler",
    "RADSampler",
    "RARDSampler",
    "SAMPLERS",
    "residual_density",
]
