"""Residual-based adaptive samplers RAD and RAR-D (Wu et al., CMAME 2023).

Candidates are drawn uniformly and kept with probability

    p(x) ∝ |r(x)|^k / mean(|r|^k) + c,

which interpolates between uniform sampling (k = 0 or c -> ∞) and pure
residual-proportional sampling (c = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .sampler_base import ResidualFn, Sampler

__all__ = ["residual_density", "RADSampler", "RARDSampler"]

# torch.multinomial supports at most 2**24 categories.
_MAX_POOL = 1 << 24


def residual_density(residuals: Tensor, k: float = 1.0, c: float = 1.0) -> Tensor:
    """Sampling probabilities (M,) ∝ ``|r|^k / mean(|r|^k) + c`` for residuals (M,).

    The density is invariant to rescaling ``r``, so residuals are first divided
    by their maximum (no overflow for large ``r`` or ``k``).  When every
    residual is zero the density is uniform.
    """
    if k < 0 or c < 0:
        raise ValueError(f"need k >= 0 and c >= 0; got k={k}, c={c}")
    r = residuals.detach().to(torch.float64).reshape(-1).abs()
    peak = r.max() if r.numel() else torch.tensor(0.0, dtype=torch.float64)
    if peak > 0:
        r = r / peak
    rk = r**k
    mean = rk.mean()
    weights = rk / mean + c if mean > 0 else torch.ones_like(r)
    return weights / weights.sum()


class _ResidualAdaptiveSampler(Sampler):
    """Shared machinery of RAD and RAR-D: candidate pools and density sampling."""

    adaptive = True

    def __init__(
        self,
        lower: Sequence[float],
        upper: Sequence[float],
        n: int,
        seed: int,
        *,
        every: int,
        pool_factor: float,
        k: float,
        c: float,
        replacement: bool,
        region: Any = None,
    ) -> None:
        super().__init__(lower, upper, n, seed, region)
        if every < 1:
            raise ValueError(f"every must be >= 1; got {every}")
        if not pool_factor >= 1:
            raise ValueError(f"pool_factor must be >= 1; got {pool_factor}")
        if k < 0 or c < 0:
            raise ValueError(f"need k >= 0 and c >= 0; got k={k}, c={c}")
        self.every = int(every)
        self.pool_size = int(round(pool_factor * self.n))
        if self.pool_size > _MAX_POOL:
            raise ValueError(f"candidate pool of {self.pool_size} points exceeds torch.multinomial's {_MAX_POOL}")
        self.k, self.c = float(k), float(c)
        self.replacement = bool(replacement)
        self._points = self._uniform(self.n)  # start from uniform points, as in Wu et al.

    def _due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0

    def _candidate_residuals(self, residual_fn: ResidualFn | None) -> tuple[Tensor, Tensor]:
        """Draw a fresh uniform pool (P, d) and evaluate |residual_fn| on it -> (P, d), (P,)."""
        if residual_fn is None:
            raise ValueError(f"{type(self).__name__}.update needs residual_fn")
        pool = self._uniform(self.pool_size)
        r = torch.as_tensor(residual_fn(pool.clone())).detach().to(device="cpu", dtype=torch.float64)
        if r.numel() != pool.shape[0]:
            raise ValueError(f"residual_fn returned {tuple(r.shape)} for {pool.shape[0]} candidates; expected (M,)")
        r = r.reshape(-1).abs()
        if not bool(torch.isfinite(r).all()):
            raise ValueError("residual_fn returned non-finite values")
        return pool, r

    def _choose(self, residuals: Tensor, m: int) -> Tensor:
        """Indices (m,) drawn from the pool with the residual density."""
        prob = residual_density(residuals, self.k, self.c)
        if not self.replacement and int((prob > 0).sum()) < m:
            # With c = 0 too few candidates may have a nonzero residual; give
            # every candidate a negligible weight so that m distinct ones exist.
            prob = prob + 1e-12 * prob.max().clamp_min(1.0 / prob.numel())
        return torch.multinomial(prob, m, replacement=self.replacement, generator=self.generator)


class RADSampler(_ResidualAdaptiveSampler):
    """Residual-based adaptive distribution (RAD, Wu et al. 2023).

    Starts from ``n`` uniform points.  Every ``every`` steps the whole set is
    replaced by ``n`` points drawn from a fresh uniform pool of
    ``pool_factor * n`` candidates with probability
    ``∝ |r|^k / mean(|r|^k) + c``.

    Options:
        every: resampling period in steps (default 1000).
        pool_factor: candidate pool size relative to ``n`` (default 10).
        k, c: density exponent and uniform floor (defaults 1 and 1, the
            paper's recommended RAD setting).
        replacement: sample candidates with replacement (default False,
            which needs ``pool_factor >= 1``).
    """

    def __init__(
        self,
        lower: Sequence[float],
        upper: Sequence[float],
        n: int,
        seed: int,
        *,
        every: int = 1000,
        pool_factor: float = 10,
        k: float = 1.0,
        c: float = 1.0,
        replacement: bool = False,
        region: Any = None,
    ) -> None:
        super().__init__(
            lower, upper, n, seed, every=every, pool_factor=pool_factor, k=k, c=c, replacement=replacement,
            region=region,
        )

    def update(self, step: int, residual_fn: ResidualFn | None = None) -> bool:
        """Resample all points from the residual density when ``step`` is a positive multiple of ``every``."""
        if not self._due(step):
            return False
        pool, r = self._candidate_residuals(residual_fn)
        self._points = pool[self._choose(r, self.n)]
        self.num_updates += 1
        return True


class RARDSampler(_ResidualAdaptiveSampler):
    """Residual-based adaptive refinement with distribution (RAR-D, Wu et al. 2023).

    Starts from ``n`` uniform points.  Every ``every`` steps, ``add`` new
    points are drawn from a fresh uniform pool of ``pool_factor * n``
    candidates with probability ``∝ |r|^k / mean(|r|^k) + c`` and appended to
    the set, until it holds ``max_points``.

    Options:
        every: refinement period in steps (default 1000).
        add: points added per refinement (default ``max(1, n // 10)``).
        max_points: cap on the set size (default ``2 * n``).
        pool_factor: candidate pool size relative to ``n`` (default 10).
        k, c: density exponent and uniform floor (defaults 2 and 0, the
            paper's recommended RAR-D setting).
        replacement: draw the ``add`` candidates with replacement (default False).
    """

    def __init__(
        self,
        lower: Sequence[float],
        upper: Sequence[float],
        n: int,
        seed: int,
        *,
        every: int = 1000,
        add: int | None = None,
        max_points: int | None = None,
        pool_factor: float = 10,
        k: float = 2.0,
        c: float = 0.0,
        replacement: bool = False,
        region: Any = None,
    ) -> None:
        super().__init__(
            lower, upper, n, seed, every=every, pool_factor=pool_factor, k=k, c=c, replacement=replacement,
            region=region,
        )
        self.add = max(1, self.n // 10) if add is None else int(add)
        self.max_points = 2 * self.n if max_points is None else int(max_points)
        if self.add < 1:
            raise ValueError(f"add must be >= 1; got {add}")
        if self.max_points < self.n:
            raise ValueError(f"max_points ({self.max_points}) must be >= n ({self.n})")
        if not self.replacement and self.add > self.pool_size:
            raise ValueError(f"add ({self.add}) exceeds the candidate pool ({self.pool_size})")

    def update(self, step: int, residual_fn: ResidualFn | None = None) -> bool:
        """Append up to ``add`` residual-sampled points when ``step`` is a positive multiple of ``every``."""
        room = self.max_points - self.num_points
        if not self._due(step) or room <= 0:
            return False
        pool, r = self._candidate_residuals(residual_fn)
        new = pool[self._choose(r, min(self.add, room))]
        self._points = torch.cat([self._points, new], dim=0)
        self.num_updates += 1
        return True
