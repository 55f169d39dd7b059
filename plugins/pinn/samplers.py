"""Collocation-point samplers for PINN training on box domains.

All samplers share one interface (see :class:`Sampler`)::

    sampler = SAMPLERS["rad"](lower=(-1, 0), upper=(1, 1), n=2000, seed=0, every=500)
    x = sampler.points()                  # (n, d) float64, CPU, inside the box
    changed = sampler.update(step, residual_fn)   # once per training step

``residual_fn(candidates) -> (M,)`` maps candidate points (M, d) float64 to
nonnegative PDE-residual magnitudes; the caller evaluates it (in chunks, on
its device).  Non-adaptive samplers never call it.

Every random draw comes from the sampler's own ``torch.Generator`` (and, for
Sobol, a seeded ``SobolEngine``), so ``state_dict()`` / ``load_state_dict()``
reproduce the continuation exactly.

Adaptive samplers follow Wu et al., "A comprehensive study of non-adaptive
and residual-based adaptive sampling for physics-informed neural networks"
(CMAME 2023): candidate points are drawn with density

    p(x) ∝ |r(x)|^k / mean(|r|^k) + c

which interpolates between uniform sampling (k = 0 or c -> ∞) and pure
residual-proportional sampling (c = 0).

Implementations live in :mod:`.sampler_base` (``Sampler``),
:mod:`.static_samplers` (uniform, LHS, Sobol) and :mod:`.adaptive_samplers`
(RAD, RAR-D, ``residual_density``); this module is the public entry point.
"""

from __future__ import annotations

from .adaptive_samplers import RADSampler, RARDSampler, residual_density
from .sampler_base import ResidualFn, Sampler
from .static_samplers import LHSSampler, SobolSampler, UniformSampler

__all__ = [
    "Sampler",
    "ResidualFn",
    "UniformSampler",
    "SobolSampler",
    "LHSSampler",
    "RADSampler",
    "RARDSampler",
    "SAMPLERS",
    "residual_density",
]

#: Sampler classes by name.
SAMPLERS: dict[str, type[Sampler]] = {
    "uniform": UniformSampler,
    "sobol": SobolSampler,
    "lhs": LHSSampler,
    "rad": RADSampler,
    "rar-d": RARDSampler,
}
