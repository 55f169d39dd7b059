"""Exact solution of the viscous Burgers benchmark by the Cole–Hopf transform.

For ``u_t + u u_x = nu u_xx`` with ``u(0, x) = -sin(pi x)`` the Cole–Hopf
transform gives (Basdevant et al., 1986)::

    u(x, t) = - ∫ sin(pi (x - η)) f(x - η) exp(-η² / (4 nu t)) dη
              / ∫           f(x - η) exp(-η² / (4 nu t)) dη,
    f(y)    = exp(-cos(pi y) / (2 pi nu)).

Substituting ``η = s z`` with ``s = sqrt(4 nu t)`` turns both integrals into
Gauss–Hermite form ``∫ g(z) exp(-z²) dz ≈ Σ_j w_j g(z_j)``.  The factor
``f`` spans ``exp(±1 / (2 pi nu))`` (``exp(±50)`` for the default nu), so the
sums are evaluated log-sum-exp style: the exponent
``a_j = log w_j - cos(pi (x - s z_j)) / (2 pi nu)`` is shifted by its maximum
before exponentiating, which cancels in the ratio.

Design notes
------------
* The evaluation uses float64 torch ops, so it is differentiable by autograd
  for ``t > 0``: the derivative of the quadrature sum is the quadrature of the
  derivative, which is what lets the generic residual check (``u_t + u u_x -
  nu u_xx`` via :mod:`..derivatives`) run on the exact solution too.
* ``t == 0`` is handled exactly (``u = -sin(pi x)``) with the usual double-
  ``where`` so that no NaN gradient leaks from ``sqrt(t)`` at ``t = 0``.
* Nodes whose weight is too small to matter even after the largest possible
  amplification by ``f`` (a factor ``exp(1 / (pi nu))`` between nodes) are
  dropped, which removes a third or more of the nodes for the default nu.
* numpy's ``hermgauss`` overflows above ~360 nodes, which bounds the node
  count.  The rule is accurate to ~1e-13 for the default nu with 200 nodes;
  much smaller viscosities need more nodes than are available, which
  :func:`check_convergence` and the edge-node guard detect.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from numpy.polynomial.hermite import hermgauss
from torch import Tensor

__all__ = ["MAX_NODES", "burgers_cole_hopf", "check_convergence"]

#: Largest node count for which numpy's ``hermgauss`` returns finite weights.
MAX_NODES = 360

# Terms smaller than exp(-_NEGLIGIBLE) times the largest term are irrelevant
# in float64 (exp(-40) ≈ 4e-18).
_NEGLIGIBLE = 40.0

# An unpruned rule is declared too narrow when a term at its outermost node
# exceeds exp(-_EDGE_LIMIT) (≈ 1e-13) times the largest term.
_EDGE_LIMIT = 30.0

# Number of (point, node) pairs evaluated at once; bounds temporary memory
# (a few float64 arrays of this size, ~16 MiB each).
_CHUNK_ELEMENTS = 1 << 21


@functools.lru_cache(maxsize=8)
def _raw_hermite_rule(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated Gauss–Hermite nodes z (n,) ascending and log-weights (n,)."""
    if not 2 <= n_nodes <= MAX_NODES:
        raise ValueError(f"quadrature_nodes must be in [2, {MAX_NODES}]; got {n_nodes}")
    with np.errstate(all="ignore"):
        z, w = hermgauss(n_nodes)
    if not (np.all(np.isfinite(w)) and np.all(w > 0) and abs(w.sum() - math.sqrt(math.pi)) < 1e-10):
        raise ValueError(f"numpy.hermgauss returned an inaccurate rule for {n_nodes} nodes")
    return z, np.log(w)


@functools.lru_cache(maxsize=32)
def _hermite_rule(n_nodes: int, nu: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """Gauss–Hermite nodes z (m,) and log-weights (m,), ascending in z, pruned of negligible nodes.

    The flag tells whether pruning removed nodes; if it did, the neglected
    tail is provably below exp(-_NEGLIGIBLE) relative to the sum.
    """
    z, log_w = _raw_hermite_rule(n_nodes)
    # Node j can matter only if w_j * max f >= w_max * min f * exp(-_NEGLIGIBLE),
    # and max f / min f = exp(1 / (pi nu)).
    keep = log_w >= log_w.max() - 1.0 / (math.pi * nu) - _NEGLIGIBLE
    return z[keep], log_w[keep], bool(not keep.all())


def burgers_cole_hopf(
    x: Tensor,
    t: Tensor,
    nu: float,
    n_nodes: int = 200,
) -> Tensor:
    """Exact Burgers solution ``u(x, t)`` for ``u(0, x) = -sin(pi x)``.

    Args:
        x: positions, shape (N,).
        t: times, shape (N,), ``t >= 0``.
        nu: viscosity (> 0).
        n_nodes: Gauss–Hermite nodes before pruning (<= :data:`MAX_NODES`).

    Returns:
        ``u`` of shape (N,), float64, on the device of ``x``; differentiable
        with respect to ``x`` and ``t`` (for ``t > 0``) when they require grad.

    Raises:
        RuntimeError: if no node could be pruned and the integrand is not
            negligible at the outermost nodes, i.e. the rule is too narrow
            for this ``nu`` and ``t``.
    """
    if nu <= 0:
        raise ValueError(f"nu must be positive; got {nu}")
    x = x.reshape(-1).to(torch.float64)
    t = t.reshape(-1).to(torch.float64)
    if x.shape != t.shape:
        raise ValueError(f"x and t must have the same number of points; got {x.numel()} and {t.numel()}")
    if bool((t.detach() < 0).any()):
        raise ValueError("Burgers exact solution is only defined for t >= 0")
    z_np, log_w_np, pruned = _hermite_rule(int(n_nodes), float(nu))
    z = torch.from_numpy(z_np).to(x.device)  # (m,)
    log_w = torch.from_numpy(log_w_np).to(x.device)  # (m,)
    inv_two_pi_nu = 1.0 / (2.0 * math.pi * nu)

    rows = max(1, _CHUNK_ELEMENTS // z.numel())
    pieces = []
    for start in range(0, x.numel(), rows):
        xc, tc = x[start : start + rows], t[start : start + rows]  # (B,)
        positive = tc > 0
        # Double-where: sqrt is only ever evaluated (and differentiated) at t > 0.
        s = torch.sqrt(4.0 * nu * torch.where(positive, tc, torch.ones_like(tc)))  # (B,)
        phase = math.pi * (xc[:, None] - s[:, None] * z)  # (B, m) = pi (x - η_j)
        a = log_w - torch.cos(phase) * inv_two_pi_nu  # (B, m) log of w_j f(x - η_j)
        a_max = a.detach().amax(dim=1, keepdim=True)  # shift cancels in the ratio
        e = torch.exp(a - a_max)  # (B, m), max entry 1
        u = -(torch.sin(phase) * e).sum(dim=1) / e.sum(dim=1)  # (B,)
        if not pruned:  # the rule's own ends: is the integrand negligible there?
            edge = torch.maximum(a[:, 0], a[:, -1]).detach() - a_max[:, 0]
            if bool((edge[positive] > -_EDGE_LIMIT).any()):
                raise RuntimeError(
                    f"Gauss-Hermite rule with {n_nodes} nodes is too narrow for nu={nu}: "
                    "the integrand is not negligible at the outermost nodes"
                )
        pieces.append(torch.where(positive, u, -torch.sin(math.pi * xc)))
    if not pieces:
        return torch.zeros(0, dtype=torch.float64, device=x.device)
    return torch.cat(pieces)


def check_convergence(nu: float, n_nodes: int, t_max: float, tol: float = 1e-9) -> float:
    """Compare the rule with ``n_nodes`` against a 25 % coarser one on probe points.

    Evaluates both on a 65 x 4 grid of ``x in [-1, 1]`` and ``t in (0, t_max]``
    (including the steep front at ``x = 0``) and raises ``ValueError`` when the
    maximum difference exceeds ``tol``: the rule has not converged, usually
    because ``nu`` is too small.  Returns the observed difference.
    """
    x = torch.linspace(-1.0, 1.0, 65, dtype=torch.float64)
    t = torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64) * t_max
    xx, tt = torch.meshgrid(x, t, indexing="ij")
    try:
        fine = burgers_cole_hopf(xx.reshape(-1), tt.reshape(-1), nu, n_nodes)
        coarse = burgers_cole_hopf(xx.reshape(-1), tt.reshape(-1), nu, max(2, (3 * n_nodes) // 4))
        diff = float((fine - coarse).abs().max())
    except RuntimeError:  # edge-node guard fired: certainly not converged
        diff = math.inf
    if not diff <= tol:
        raise ValueError(
            f"Burgers quadrature not converged for nu={nu} with {n_nodes} nodes "
            f"(difference {diff:.2e} to a coarser rule); increase quadrature_nodes or nu"
        )
    return diff
