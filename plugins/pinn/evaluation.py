"""Evaluation of the ``pinn`` task: the per-term loss, the error on the test grid, images.

``rel_l2`` is ``‖u_pred − u_exact‖₂ / ‖u_exact‖₂`` on a tensor-product grid over the problem's
bounding box, restricted to the points inside its domain; a problem with no exact or reference
solution (``exact`` raises ``NotImplementedError``) reports the rest. Residuals are computed in
chunks of ``residual_chunk`` rows (whole rows: a periodic pair stays together), forward passes on
the grid in chunks of ``eval_chunk`` points.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from phasetrain.errors import BadInput

from .problem_base import relative_l2, test_grid


class Evaluation:
    """What the ``pinn`` task reports (a base of :class:`.task.PINN`, which owns the state)."""

    problem: Any
    options: Any
    terms: list[Any]
    names: list[str]
    weights: list[float]
    points: Tensor
    condition_points: list[Tensor]
    unknowns: Any
    _grid: Tensor | None
    _exact: Tensor | None

    def _place(self, points: Tensor) -> Tensor:
        raise NotImplementedError

    def _mean_squares(self, model: nn.Module) -> dict[str, float]:
        """Mean squared residual of every term over its whole point set, chunked."""
        out = {}
        with torch.enable_grad():
            for term, rows in zip(self.terms, [self.points, *self.condition_points], strict=True):
                total = 0.0
                for chunk in rows.split(self.options.residual_chunk):  # whole rows: groups stay together
                    total += float(term.evaluate(model, chunk).detach().double().square().sum())
                out[term.name] = total / max(1, rows.shape[0])
        return out

    def grid(self) -> tuple[Tensor, Tensor | None]:
        """The fixed test grid inside the domain (M, d) and the exact solution on it (M, n_out),
        float64 on CPU; ``None`` for a problem without an exact or reference solution."""
        if self._grid is None:
            full, inside = self._full_grid()
            grid = full if inside is None else full[inside]
            try:
                with torch.no_grad():
                    exact = self.problem.exact(grid).reshape(grid.shape[0], -1)
            except NotImplementedError:  # a residual plugin without an exact or reference solution
                exact = None
            self._grid, self._exact = grid, exact
        return self._grid, self._exact

    def _full_grid(self) -> tuple[Tensor, Tensor | None]:
        """The tensor-product grid over the box and which of its points are in the domain."""
        size = self.options.eval_grid or None
        if size is not None and len(size) == 1:
            size = size[0]
        try:
            full = test_grid(self.problem, size)
        except ValueError as exc:
            raise BadInput(f"task.eval_grid: {exc}") from None
        return full, None if self.problem.is_box else self.problem.domain.inside(full)

    def predict(self, model: nn.Module, points: Tensor) -> Tensor:
        """``model(points)`` (M, n_out) float64 on CPU, in chunks of ``eval_chunk``, no autograd."""
        with torch.no_grad():
            parts = [model(self._place(c)).to("cpu", torch.float64) for c in points.split(self.options.eval_chunk)]
        return torch.cat(parts)

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        mse = self._mean_squares(model)
        results: dict[str, Any] = {"eval_loss": sum(w * mse[n] for n, w in zip(self.names, self.weights, strict=True))}
        grid, exact = self.grid()
        if exact is not None:
            pred = self.predict(model, grid)
            results["rel_l2"] = relative_l2(pred, exact)
            if pred.shape[1] > 1:
                for i, name in enumerate(self.problem.output_names):
                    results[f"rel_l2_{name}"] = relative_l2(pred[:, i], exact[:, i])
        results.update({f"mse_{name}": value for name, value in mse.items()})
        results["points"] = self.points.shape[0]
        if self.unknowns is not None:
            results.update({f"coef_{name}": value for name, value in self.unknowns.values().items()})
            results.update({f"coef_{name}_error": value for name, value in self.unknowns.errors().items()})
        return results

    def images(self, model: nn.Module) -> dict[str, Any]:
        """``{output name: matplotlib Figure}``: prediction, exact solution and absolute error.

        For two inputs the whole test grid is shown; for three, the slice at the last input's
        upper bound (the final time of a space-time problem). Other problems give no figures;
        without an exact solution, the prediction alone. Points of the bounding box outside the
        domain are drawn blank.
        """
        from .images import field_images

        _grid, exact = self.grid()
        full, inside = self._full_grid()
        pred = self.predict(model, full)
        truth = None
        if exact is not None:
            truth = torch.full_like(pred, float("nan"))
            truth[slice(None) if inside is None else inside] = exact
        if inside is not None:
            pred[~inside] = float("nan")
        return field_images(self.problem, full, pred, truth, self._grid_shape())

    def _grid_shape(self) -> tuple[int, ...]:
        size = self.options.eval_grid or list(self.problem.default_grid)
        return tuple(size * self.problem.input_dim if len(size) == 1 else size)
