"""Base class of the collocation samplers (see :mod:`.samplers` for the overview)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .domain import as_bounds
from .geometry import rejection

__all__ = ["Sampler", "ResidualFn"]

#: ``residual_fn(candidates (M, d) float64) -> (M,)`` nonnegative residual magnitudes.
ResidualFn = Callable[[Tensor], Tensor]


class Sampler:
    """Base class: a set of collocation points in the box ``[lower, upper]``.

    Args:
        lower, upper: box bounds (d,) in the problem's input order.
        n: number of points (initial number for growing samplers).
        seed: seed of the sampler's private random generator.
        region: a domain inside the box (a :class:`~.geometry.Geometry` or anything with
            ``inside(x) -> (N,) bool``); points are drawn in the box as usual and those outside
            the region are dropped until there are enough. ``None``: the whole box.
        **options: sampler-specific keyword options (see subclasses).

    Subclasses implement :meth:`_draw_unit` (non-adaptive) or override
    :meth:`update` (adaptive) and may add entries to the state dict through
    :meth:`_extra_state` / :meth:`_load_extra_state`.
    """

    #: Whether :meth:`update` uses ``residual_fn``.
    adaptive: ClassVar[bool] = False

    def __init__(self, lower: Sequence[float], upper: Sequence[float], n: int, seed: int, region: Any = None,
                 **options: Any) -> None:
        if options:
            raise TypeError(f"{type(self).__name__} got unknown options: {sorted(options)}")
        self.lower, self.upper = as_bounds(lower, upper)  # (d,), (d,) float64
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer; got {n}")
        self.n = int(n)
        self.seed = int(seed)
        self.region = region
        self.generator = torch.Generator().manual_seed(self.seed)
        #: How many times the point set has changed since construction.
        self.num_updates = 0
        self._points = torch.empty(0, self.dim, dtype=torch.float64)

    # ------------------------------------------------------------- queries
    @property
    def dim(self) -> int:
        """Number of coordinates ``d``."""
        return self.lower.numel()

    @property
    def num_points(self) -> int:
        """Current number of points (grows for :class:`RARDSampler`)."""
        return self._points.shape[0]

    def points(self) -> Tensor:
        """Current collocation points (num_points, d) float64 (a copy, safe to modify)."""
        return self._points.clone()

    # ------------------------------------------------------------ updating
    def update(self, step: int, residual_fn: ResidualFn | None = None) -> bool:
        """Called once per training step; returns True when the points changed."""
        raise NotImplementedError

    # --------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically: points, RNG state, counters."""
        return {
            "sampler": type(self).__name__,
            "seed": self.seed,
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "n": self.n,
            "points": self._points.clone(),
            "generator": self.generator.get_state(),
            "num_updates": self.num_updates,
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict` of the same sampler class and box."""
        if state.get("sampler") != type(self).__name__:
            raise ValueError(f"state of {state.get('sampler')!r} cannot be loaded into {type(self).__name__}")
        lower, upper = as_bounds(state["lower"], state["upper"])
        if not (torch.equal(lower, self.lower) and torch.equal(upper, self.upper)):
            raise ValueError(
                f"state was saved for the box {lower.tolist()}..{upper.tolist()}, "
                f"this sampler covers {self.lower.tolist()}..{self.upper.tolist()}"
            )
        points = torch.as_tensor(state["points"]).to(dtype=torch.float64, device="cpu").clone()
        if points.dim() != 2 or points.shape[1] != self.dim:
            raise ValueError(f"saved points have shape {tuple(points.shape)}; expected (M, {self.dim})")
        self.seed = int(state["seed"])
        self.n = int(state["n"])
        self._points = points
        self.generator.set_state(state["generator"])
        self.num_updates = int(state["num_updates"])
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------- helpers
    def _draw_unit(self, n: int) -> Tensor:
        """``n`` points (n, d) in the unit cube; the sampler's distribution."""
        raise NotImplementedError

    def _to_box(self, unit: Tensor) -> Tensor:
        """Map unit-cube points (n, d) affinely onto the box."""
        return self.lower + (self.upper - self.lower) * unit

    def _uniform(self, n: int) -> Tensor:
        """``n`` i.i.d. uniform points (n, d) in the box (the region) from the private generator."""
        return self._in_region(lambda m: torch.rand(m, self.dim, generator=self.generator, dtype=torch.float64), n)

    def _in_region(self, draw_unit: Callable[[int], Tensor], n: int) -> Tensor:
        """``n`` points (n, d) of ``draw_unit`` mapped onto the box, keeping those in the region."""
        if self.region is None:
            return self._to_box(draw_unit(n))
        return rejection(lambda m: self._to_box(draw_unit(m)), self.region.inside, n,
                         f"{type(self).__name__} in {self.region!r}").reshape(n, self.dim)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, num_points={self.num_points}, seed={self.seed})"
