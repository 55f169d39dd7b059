"""Allen–Cahn: a periodic reaction-diffusion benchmark that plain PINNs are known to fail."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .allen_cahn_reference import reference
from .conditions import initial, periodic
from .derivatives import Derivatives
from .problem_base import Condition, Problem

__all__ = ["AllenCahn"]


class AllenCahn(Problem):
    """Allen–Cahn equation with periodic boundaries (Raissi et al. 2019; Wang et al. 2022).

    PDE:      ``u_t - eps u_xx + 5 u^3 - 5 u = 0``
    Domain:   ``x in [-1, 1]`` (periodic), ``t in [0, 1]``; input order ``(x, t)``; output ``(u,)``.
    Initial:  ``u(x, 0) = x^2 cos(pi x)``.
    Periodic: ``u`` and ``u_x`` equal at ``x = -1`` and ``x = 1``.
    Reference: Fourier spectral method (1,024 modes) with ETDRK4 in time
              (:mod:`.allen_cahn_reference`), interpolated to any point; ~1e-6 from a finer solve.

    With ``task.hard_constraints``, ``hard`` chooses what the network satisfies exactly:

    * ``"initial"``: ``u = x^2 cos(pi x) + t (1 - x^2) N(x, t)``, the initial condition and
      ``u(-1, t) = u(1, t) = -1`` (DeepXDE's Allen–Cahn example; the periodic solution stays
      within 3e-3 of -1 there). The periodic term keeps matching ``u_x`` in the loss, which the
      initial condition's kink at ``x = +-1`` forbids near ``t = 0``.
    * ``"periodic"``: ``x`` enters the network only through ``cos``/``sin`` of ``pi k x``, so ``u``
      is exactly periodic in every derivative; the initial condition stays in the loss.

    Args:
        eps: diffusion coefficient (1e-4 in the benchmark).
        hard: ``"initial"`` or ``"periodic"`` (see above).
    """

    name = "allen-cahn"
    input_names = ("x", "t")
    output_names = ("u",)
    lower = (-1.0, 0.0)
    upper = (1.0, 1.0)
    default_grid = (513, 201)  # x on the spectral grid (both ends), t every 0.005
    reference = True

    def __init__(self, *, eps: float = 1e-4, hard: str = "initial") -> None:
        if not 1e-5 <= eps <= 1.0:
            raise ValueError(f"allen-cahn: eps must be between 1e-5 and 1 (resolved by the reference); got {eps}")
        if hard not in ("initial", "periodic"):
            raise ValueError(f"allen-cahn: hard is 'initial' or 'periodic'; got {hard!r}")
        super().__init__(eps=float(eps), hard=hard)
        self.eps, self.hard = float(eps), hard
        self.periodic_inputs = (0,) if hard == "periodic" else ()
        self.hard_conditions = ("periodic",) if hard == "periodic" else ("initial",)

    def hard_output(self, x: Tensor, raw: Tensor) -> Tensor:
        if self.hard == "periodic":
            return raw
        xs, t = x[:, :1], x[:, 1:]
        return xs**2 * torch.cos(math.pi * xs) + t * (1 - xs**2) * raw

    def initial_value(self, x: Tensor) -> Tensor:
        """``u(x, 0) = x^2 cos(pi x)`` (N, 1) at points ``x`` (N, 2)."""
        xs = x[:, :1]
        return xs**2 * torch.cos(math.pi * xs)

    def residual(self, x: Tensor, u: Tensor) -> Tensor:
        """``u_t - eps u_xx + 5 u^3 - 5 u`` -> (N, 1)."""
        u = self._outputs(x, u)
        d = Derivatives(u, x)
        v = u[:, 0]
        return (d(1) - self.eps * d(0, 0) + 5 * v**3 - 5 * v)[:, None]

    def conditions(self) -> list[Condition]:
        return [initial("initial", self, self.initial_value), periodic("periodic", self, dim=0, derivatives=1)]

    def exact(self, x: Tensor) -> Tensor:
        """The spectral reference (N, 1) (not differentiable: a numerical solution)."""
        points = x.detach().to("cpu", torch.float64).numpy()
        u = reference(self.eps)(points[:, 0], points[:, 1])
        return torch.from_numpy(u).to(dtype=x.dtype, device=x.device)[:, None]
