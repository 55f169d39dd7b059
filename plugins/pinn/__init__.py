"""Physics-informed neural network (PINN) support: the pure math layer.

* :mod:`.derivatives` -- autograd helpers (``gradient``, ``partial``,
  ``laplacian``, ``divergence``, the memoising ``Derivatives``).
* :mod:`.problems` -- PDE benchmark problems with exact solutions
  (``PROBLEMS`` registry, ``Condition``, ``Problem``, ``test_grid``,
  ``relative_l2``).
* :mod:`.samplers` -- collocation samplers (``SAMPLERS`` registry: uniform,
  Sobol, Latin hypercube, RAD, RAR-D).

Nothing here knows about the trainer; it only depends on torch and numpy.
"""

from __future__ import annotations

from .derivatives import Derivatives, divergence, gradient, laplacian, partial
from .problems import (
    PROBLEMS,
    Burgers1D,
    Condition,
    Elastic2D,
    Heat1D,
    Helmholtz2D,
    Poisson2D,
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
