"""Non-adaptive samplers: i.i.d. uniform, Latin hypercube and scrambled Sobol'."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .sampler_base import ResidualFn, Sampler

__all__ = ["UniformSampler", "LHSSampler", "SobolSampler"]


class _StaticSampler(Sampler):
    """Non-adaptive sampler that can optionally redraw every ``resample_every`` steps."""

    def __init__(
        self, lower: Sequence[float], upper: Sequence[float], n: int, seed: int, *, resample_every: int = 0,
        region: Any = None,
    ) -> None:
        super().__init__(lower, upper, n, seed, region)
        if resample_every < 0:
            raise ValueError(f"resample_every must be >= 0 (0 = never); got {resample_every}")
        self.resample_every = int(resample_every)
        self._points = self._in_region(self._draw_unit, self.n)

    def update(self, step: int, residual_fn: ResidualFn | None = None) -> bool:
        """Redraw ``n`` fresh points when ``resample_every > 0`` and ``step`` is a positive multiple of it."""
        if self.resample_every > 0 and step > 0 and step % self.resample_every == 0:
            self._points = self._in_region(self._draw_unit, self.n)
            self.num_updates += 1
            return True
        return False


class UniformSampler(_StaticSampler):
    """I.i.d. uniform points in the box.

    Options:
        resample_every: redraw fresh points every this many steps (0 = never).
    """

    def _draw_unit(self, n: int) -> Tensor:
        return torch.rand(n, self.dim, generator=self.generator, dtype=torch.float64)


class LHSSampler(_StaticSampler):
    """Latin hypercube: each coordinate has exactly one point in each of ``n`` equal strata.

    Point ``i`` gets, in every dimension independently, the stratum
    ``perm_k[i]`` of a random permutation and a uniform jitter inside it. In a region smaller than
    the box, hypercubes are drawn over the box and their points inside the region kept.

    Options:
        resample_every: redraw a fresh hypercube every this many steps (0 = never).
    """

    def _draw_unit(self, n: int) -> Tensor:
        strata = torch.stack([torch.randperm(n, generator=self.generator) for _ in range(self.dim)], dim=1)  # (n, d)
        jitter = torch.rand(n, self.dim, generator=self.generator, dtype=torch.float64)  # (n, d) in [0, 1)
        return (strata.to(torch.float64) + jitter) / n


class SobolSampler(_StaticSampler):
    """Scrambled Sobol' low-discrepancy points (``torch.quasirandom.SobolEngine``).

    The scrambling is seeded with ``seed``. In a region smaller than the box the points of the
    sequence that fall outside it are skipped (the rest stay low-discrepancy in the region).  Resampling continues the same
    sequence, so the union of all batches stays low-discrepancy.  For ``n`` a
    power of two each batch aligned to the sequence start is a (t, m, s)-net:
    every coordinate has exactly one point per interval of width ``1/n``.

    Options:
        resample_every: draw the next ``n`` points of the sequence every this
            many steps (0 = never).
    """

    def __init__(
        self, lower: Sequence[float], upper: Sequence[float], n: int, seed: int, *, resample_every: int = 0,
        region: Any = None,
    ) -> None:
        self._engine = torch.quasirandom.SobolEngine(len(lower), scramble=True, seed=int(seed))
        super().__init__(lower, upper, n, seed, resample_every=resample_every, region=region)

    def _draw_unit(self, n: int) -> Tensor:
        return self._engine.draw(n, dtype=torch.float64)

    def _extra_state(self) -> dict[str, Any]:
        return {"sobol_num_generated": int(self._engine.num_generated)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        # Rebuild the engine with the saved seed and skip what was consumed.
        self._engine = torch.quasirandom.SobolEngine(self.dim, scramble=True, seed=self.seed)
        self._engine.fast_forward(int(state["sobol_num_generated"]))
