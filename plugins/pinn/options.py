"""Config classes of the PINN components: one per problem (``[residual]``) and per sampler.

Each class mirrors the keyword arguments of the problem or sampler it configures, with
validators, so a bad value is a config error naming its dotted field (``residual.nu: must be
> 0``) before anything is built. Defaults are the problems' and samplers' own defaults.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

from phasetrain.config import FieldValueError, at_least, in_range, non_negative, one_of, positive

# ---------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------


def _modes(width: int, integer_wavenumber: bool) -> Any:
    """Validator for a list of modes, each ``width`` numbers; optionally an integer >= 1 first."""

    def validator(_instance: Any, attribute: attrs.Attribute, value: Sequence[Sequence[float]]) -> None:
        if not value:
            raise FieldValueError(attribute.name, "needs at least one mode")
        for mode in value:
            if len(mode) != width:
                raise FieldValueError(attribute.name, f"each mode has {width} numbers, got {list(mode)!r}")
            n = mode[0]
            if integer_wavenumber and (n != int(n) or n < 1):
                raise FieldValueError(
                    attribute.name,
                    f"wavenumbers must be whole numbers >= 1 (zero boundary values), got {n!r}",
                )

    return validator


@attrs.define
class BurgersOptions:
    """``u_t + u u_x = nu u_xx`` on x in [-1, 1], t in [0, 1]; input order (x, t)."""

    nu: float = attrs.field(default=0.01 / math.pi, validator=positive)  # viscosity
    quadrature_nodes: int = attrs.field(default=200, validator=in_range(2, 360))  # exact solution


@attrs.define
class Poisson2DOptions:
    """``-lap u = f`` on [0, 1]^2; input order (x, y)."""

    # (a, b, amplitude): u = sum amplitude sin(a pi x) sin(b pi y)
    modes: list[tuple[float, float, float]] = attrs.field(
        factory=lambda: [(1.0, 1.0, 1.0)], validator=_modes(3, integer_wavenumber=False)
    )


@attrs.define
class Heat1DOptions:
    """``u_t = alpha u_xx`` on x in [0, 1], t in [0, 1]; input order (x, t)."""

    alpha: float = attrs.field(default=0.1, validator=positive)  # diffusivity
    # (n, A_n): u(x, 0) = sum A_n sin(n pi x)
    modes: list[tuple[float, float]] = attrs.field(
        factory=lambda: [(1.0, 1.0), (3.0, 0.5)], validator=_modes(2, integer_wavenumber=True)
    )


@attrs.define
class Wave1DOptions:
    """``u_tt = c^2 u_xx`` on x in [0, 1], t in [0, 1]; input order (x, t)."""

    c: float = attrs.field(default=2.0, validator=positive)  # wave speed
    # (n, A_n): u(x, 0) = sum A_n sin(n pi x), u_t(x, 0) = 0
    modes: list[tuple[float, float]] = attrs.field(
        factory=lambda: [(1.0, 1.0), (4.0, 0.5)], validator=_modes(2, integer_wavenumber=True)
    )


@attrs.define
class Elastic2DOptions:
    """Elastodynamics ``rho u_tt = (lam + mu) grad div u + mu lap u + f`` on [0, 1]^2 x [0, 1];
    input order (x, y, t); outputs (u, v)."""

    lam: float = 1.0  # first Lamé parameter
    mu: float = attrs.field(default=0.5, validator=positive)  # shear modulus
    rho: float = attrs.field(default=1.0, validator=positive)  # density
    omega: float = attrs.field(default=2.0 * math.pi, validator=positive)  # angular frequency

    def __attrs_post_init__(self) -> None:
        if not self.lam + 2 * self.mu > 0:
            raise FieldValueError("lam", f"needs lam + 2 mu > 0 (a positive P-wave modulus), got {self.lam!r}")


@attrs.define
class Helmholtz2DOptions:
    """``lap u + k^2 u = q`` on [-1, 1]^2; input order (x, y)."""

    k: float = 1.0  # wavenumber
    a1: float = 1.0  # frequency of the solution along x
    a2: float = 4.0  # frequency of the solution along y


@attrs.define
class BurgersInverseOptions:
    """Burgers with unknown ``lambda1`` (true 1) and ``nu``, identified from noisy observations."""

    nu: float = attrs.field(default=0.01 / math.pi, validator=positive)  # the true viscosity
    quadrature_nodes: int = attrs.field(default=200, validator=in_range(2, 360))
    observations: int = attrs.field(default=2000, validator=positive)  # measured points
    noise: float = attrs.field(default=0.0, validator=in_range(0.0, 0.5))  # relative to the data's std
    initial_lambda1: float = 0.0  # starting guess
    initial_nu: float = attrs.field(default=0.01, validator=positive)  # starting guess


@attrs.define
class AllenCahnOptions:
    """``u_t - eps u_xx + 5 u^3 - 5 u = 0`` on x in [-1, 1] (periodic), t in [0, 1]; input order (x, t)."""

    eps: float = attrs.field(default=1e-4, validator=in_range(1e-5, 1.0))  # diffusion
    # What task.hard_constraints builds in: "initial" (u = x^2 cos(pi x) + t (1 - x^2) N, so the
    # initial condition and u(+-1, t) = -1) or "periodic" (x only through cos/sin(pi k x)).
    hard: str = attrs.field(default="initial", validator=one_of("initial", "periodic"))


@attrs.define
class PoissonLShapeOptions:
    """``-lap u = f`` on the L-shape [-1, 1]^2 minus (0, 1]^2; input order (x, y)."""

    a: float = 0.5  # weight of the harmonic part x^2 - y^2 of the solution


PROBLEM_OPTIONS: dict[str, type] = {
    "burgers": BurgersOptions,
    "poisson2d": Poisson2DOptions,
    "heat1d": Heat1DOptions,
    "wave1d": Wave1DOptions,
    "elastic2d": Elastic2DOptions,
    "helmholtz2d": Helmholtz2DOptions,
    "burgers-inverse": BurgersInverseOptions,
    "allen-cahn": AllenCahnOptions,
    "poisson-lshape": PoissonLShapeOptions,
}

# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


@attrs.define
class StaticSamplerOptions:
    """uniform, sobol, lhs: a fixed point set, optionally redrawn every ``resample_every`` steps."""

    n: int = attrs.field(default=10_000, validator=positive)  # collocation points
    seed_offset: int = 0  # added to the run seed: a different point set with the same model init
    resample_every: int = attrs.field(default=0, validator=non_negative)  # 0: never


@attrs.define
class RADOptions:
    """rad: every ``every`` steps all points are redrawn with density ~ |r|^k / mean |r|^k + c."""

    n: int = attrs.field(default=10_000, validator=positive)
    seed_offset: int = 0
    every: int = attrs.field(default=1000, validator=positive)  # resampling period in steps
    pool_factor: float = attrs.field(default=10.0, validator=at_least(1))  # candidates per point
    k: float = attrs.field(default=1.0, validator=non_negative)
    c: float = attrs.field(default=1.0, validator=non_negative)
    replacement: bool = False


@attrs.define
class RARDOptions:
    """rar-d: every ``every`` steps ``add`` points drawn with the residual density are appended."""

    n: int = attrs.field(default=10_000, validator=positive)  # initial points
    seed_offset: int = 0
    every: int = attrs.field(default=1000, validator=positive)
    add: int = attrs.field(default=0, validator=non_negative)  # 0: n // 10
    max_points: int = attrs.field(default=0, validator=non_negative)  # 0: 2 n
    pool_factor: float = attrs.field(default=10.0, validator=at_least(1))
    k: float = attrs.field(default=2.0, validator=non_negative)
    c: float = attrs.field(default=0.0, validator=non_negative)
    replacement: bool = False

    def __attrs_post_init__(self) -> None:
        if self.max_points and self.max_points < self.n:
            raise FieldValueError("max_points", f"must be >= n ({self.n}), got {self.max_points}")


SAMPLER_OPTIONS: dict[str, type] = {
    "uniform": StaticSamplerOptions,
    "sobol": StaticSamplerOptions,
    "lhs": StaticSamplerOptions,
    "rad": RADOptions,
    "rar-d": RARDOptions,
}


def sampler_kwargs(options: Any) -> dict[str, Any]:
    """The sampler class's keyword options from a config instance (``n`` and the seed aside)."""
    kwargs = attrs.asdict(options)
    kwargs.pop("n")
    kwargs.pop("seed_offset")
    for key in ("add", "max_points"):  # 0 means the sampler's own default
        if kwargs.get(key) == 0:
            kwargs[key] = None
    return kwargs
