"""Autograd helpers for the derivatives that appear in PDE residuals.

Every helper differentiates model outputs with respect to a *single* input
tensor ``x`` of shape ``(N, d)`` whose columns are the coordinates (for
example ``(x, t)``).  Row ``i`` of the output only depends on row ``i`` of
``x`` (a pointwise model such as an MLP), so the gradient of ``u.sum()`` with
respect to ``x`` yields all ``N`` per-point gradients in one reverse pass.

All derivatives are built with ``create_graph=True`` so that they can be
differentiated again (higher-order derivatives) and so that a loss built from
them can be back-propagated to the model parameters.

Reuse of intermediate gradients
-------------------------------
One reverse pass returns the *full* gradient ``(N, d)`` of a scalar field, so
``u_x`` and ``u_t`` come from the same pass, and ``u_xx`` and ``u_xt`` from the
same second pass.  :class:`Derivatives` memoises these full gradients for one
field ``u``; PDE residuals should create one ``Derivatives`` object per output
field and ask it for every partial they need::

    d = Derivatives(u, x)            # u (N,) or (N, 1), x (N, 2) = (x, t)
    u_x, u_t, u_xx = d(0), d(1), d(0, 0)   # 2 reverse passes instead of 4

The module-level functions (:func:`gradient`, :func:`partial`,
:func:`laplacian`, :func:`divergence`) are convenience wrappers that build a
fresh cache per call.  The cache deliberately lives in an explicit object (not
on the tensor ``u``): the cached gradients hold autograd graphs that may
reference ``u`` itself, and hiding them on ``u`` would create reference cycles
through C++ that Python's garbage collector cannot break.

Mixed partials are assumed to commute (Schwarz's theorem, true for the smooth
activations used in PINNs), so requested dimensions are sorted before
differentiating; ``d(1, 0)`` therefore reuses the gradient of ``u_x``.

Gradients must be enabled (not inside ``torch.no_grad()``), ``x`` must
require grad and ``u`` must have been computed from it with autograd on;
otherwise the helpers raise instead of silently returning zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Derivatives", "gradient", "partial", "laplacian", "divergence"]


def _check_input(x: Tensor) -> None:
    """Validate the coordinate tensor ``x`` (N, d)."""
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a tensor of shape (N, d); got shape {tuple(getattr(x, 'shape', ()))}")
    if not x.requires_grad:
        raise ValueError("x must require grad (call x.requires_grad_() before evaluating the model)")


def _as_scalar_field(u: Tensor, x: Tensor) -> Tensor:
    """Return ``u`` (N,) from ``u`` of shape (N,) or (N, 1), checking it matches ``x``."""
    if u.dim() == 2 and u.shape[1] == 1:
        u = u[:, 0]
    if u.dim() != 1 or u.shape[0] != x.shape[0]:
        raise ValueError(
            f"u must have shape (N,) or (N, 1) with N = {x.shape[0]}; got {tuple(u.shape)}"
        )
    return u


def _full_gradient(s: Tensor, x: Tensor) -> Tensor:
    """Gradient of the per-point scalar ``s`` (N,) with respect to ``x`` (N, d) -> (N, d).

    A field that does not depend on ``x`` (a derivative that is constant, so
    has no graph, or a graph that never reaches ``x``) has a zero gradient
    rather than raising.
    """
    if not s.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(
        s,
        x,
        grad_outputs=torch.ones_like(s),
        create_graph=True,
        allow_unused=True,
        materialize_grads=True,
    )
    return g


class Derivatives:
    """Memoised partial derivatives of one scalar field ``u`` with respect to ``x``.

    Args:
        u: field values, shape (N,) or (N, 1), computed from ``x``.
        x: coordinates, shape (N, d), ``requires_grad=True``.

    ``self(*dims)`` / :meth:`partial` return the partial derivative along the
    listed input columns, e.g. ``self(0, 0)`` is ``u_xx`` when column 0 is x.
    The object only lives as long as the caller keeps it (typically for the
    duration of one residual evaluation).
    """

    def __init__(self, u: Tensor, x: Tensor) -> None:
        _check_input(x)
        if not torch.is_grad_enabled():
            # Under no_grad the first derivatives would carry no graph and every
            # higher derivative would silently come out as zero.
            raise RuntimeError("PDE derivatives need autograd: evaluate them inside torch.enable_grad()")
        if not u.requires_grad:
            raise ValueError("u does not require grad: it was computed under torch.no_grad() or detached from x")
        self.x = x
        self.u = _as_scalar_field(u, x)  # (N,)
        # Full gradients keyed by the (sorted) multi-index of the field that
        # was differentiated: () -> grad u, (0,) -> grad u_x, ...
        self._grads: dict[tuple[int, ...], Tensor] = {}

    @property
    def dim(self) -> int:
        """Number of input coordinates ``d``."""
        return self.x.shape[1]

    def _normalise(self, dims: Sequence[int]) -> tuple[int, ...]:
        """Validate dims, map negative indices, and sort them (Schwarz)."""
        out = []
        for k in dims:
            k = int(k)
            if not -self.dim <= k < self.dim:
                raise IndexError(f"input dimension {k} out of range for x with {self.dim} columns")
            out.append(k % self.dim)
        return tuple(sorted(out))

    def gradient(self, *dims: int) -> Tensor:
        """Full gradient (N, d) of ``∂^dims u`` (of ``u`` itself when ``dims`` is empty)."""
        key = self._normalise(dims)
        if key not in self._grads:
            field = self.partial(*key)  # (N,) -- recursion stops at key == ()
            self._grads[key] = _full_gradient(field, self.x)
        return self._grads[key]

    def partial(self, *dims: int) -> Tensor:
        """Partial derivative (N,) of ``u`` along the input columns ``dims`` (u itself if empty)."""
        key = self._normalise(dims)
        if not key:
            return self.u
        # ∂^{k1..kn} u = column kn of the gradient of ∂^{k1..k(n-1)} u.
        return self.gradient(*key[:-1])[:, key[-1]]

    __call__ = partial

    def laplacian(self, dims: Sequence[int] | None = None) -> Tensor:
        """Sum (N,) of the pure second derivatives along ``dims`` (default: all columns)."""
        dims = range(self.dim) if dims is None else dims
        terms = [self.partial(k, k) for k in dims]
        if not terms:
            return torch.zeros_like(self.u)
        return torch.stack(terms, dim=0).sum(dim=0)


def gradient(u: Tensor, x: Tensor) -> Tensor:
    """Gradient (N, d) of the scalar field ``u`` (N,) or (N, 1) with respect to ``x`` (N, d)."""
    return Derivatives(u, x).gradient()


def partial(u: Tensor, x: Tensor, *dims: int) -> Tensor:
    """Partial derivative (N,) of ``u`` (N,) or (N, 1) along the input columns ``dims``.

    ``partial(u, x, 0, 0)`` is ``u_xx`` and ``partial(u, x, 1)`` is ``u_t`` for
    ``x = (x, t)``.  With no ``dims`` it returns ``u`` as (N,).  Each call does
    ``len(dims)`` reverse passes; use :class:`Derivatives` to share passes
    between several partials of the same field.
    """
    return Derivatives(u, x).partial(*dims)


def laplacian(u: Tensor, x: Tensor, dims: Sequence[int] | None = None) -> Tensor:
    """Laplacian (N,) of ``u`` (N,) or (N, 1): sum of ``u_kk`` over ``dims`` (default all columns of x)."""
    return Derivatives(u, x).laplacian(dims)


def divergence(v: Tensor, x: Tensor, dims: Sequence[int] | None = None) -> Tensor:
    """Divergence (N,) of the vector field ``v`` (N, k): ``sum_i ∂v_i / ∂x_{dims[i]}``.

    ``dims`` (length k) names the input column each component is differentiated
    along; by default component ``i`` pairs with column ``i`` (requires k <= d),
    so for inputs ``(x, y, t)`` and a displacement ``(u, v)`` the default is
    ``u_x + v_y``.
    """
    _check_input(x)
    if v.dim() != 2 or v.shape[0] != x.shape[0]:
        raise ValueError(f"v must have shape (N, k) with N = {x.shape[0]}; got {tuple(v.shape)}")
    k = v.shape[1]
    if dims is None:
        if k > x.shape[1]:
            raise ValueError(f"v has {k} components but x only {x.shape[1]} columns; pass dims explicitly")
        dims = range(k)
    dims = list(dims)
    if len(dims) != k:
        raise ValueError(f"dims must list one input column per component of v ({k}); got {dims}")
    terms = [Derivatives(v[:, i], x).partial(dims[i]) for i in range(k)]
    if not terms:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    return torch.stack(terms, dim=0).sum(dim=0)
