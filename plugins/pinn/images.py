"""Pictures of a PINN's fields on the test grid: prediction, exact solution and error.

One matplotlib figure per output, three panels side by side, each with its axes (the problem's
input names and box), a colour bar and its value range. Prediction and exact share one colour
scale so they compare by eye; the error has its own, from 0 to its maximum, and the title says
how large it is (maximum absolute error and relative L2). TensorBoard's observer sends the
figures with ``add_figure`` and ``phasetrain report`` saves them as PNGs.

Figures are built with matplotlib's object-oriented API on the Agg canvas, so drawing never
touches pyplot's global state or needs a display.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

COLOUR_MAP = "viridis"  # perceptually uniform, readable in grey
ERROR_MAP = "magma"


def _as_image(column: Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """Grid values (M,) in C order -> (H, W) with the first input along the image's width."""
    field = column.detach().cpu().numpy().reshape(shape)
    if field.ndim == 3:  # space-time in 2-D: the slice at the last input's upper bound
        field = field[..., -1]
    # Rows of the image run along the second input (drawn with origin="lower": it grows upwards).
    return field.T


def field_figure(name: str, prediction: np.ndarray, exact: np.ndarray | None, extent: list[float],
                 labels: tuple[str, str], where: str = "") -> Any:
    """Three panels (prediction, exact, |error|) of one output, each with a colour bar; only the
    prediction when there is no exact solution. NaN marks points outside the domain: drawn blank
    and left out of every range."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels: list[tuple[np.ndarray, str, str, float, float]]
    if exact is None:
        low, high = float(np.nanmin(prediction)), float(np.nanmax(prediction))
        panels = [(prediction, f"{name}: prediction (no exact solution)", COLOUR_MAP, low, high)]
    else:
        low = float(min(np.nanmin(prediction), np.nanmin(exact)))
        high = float(max(np.nanmax(prediction), np.nanmax(exact)))
        error = np.abs(prediction - exact)
        top = float(np.nanmax(error))
        norm = float(np.sqrt(np.nansum(exact**2)))
        rel_l2 = float(np.sqrt(np.nansum((prediction - exact) ** 2)) / norm) if norm > 0 else float("nan")
        panels = [(prediction, f"{name}: prediction", COLOUR_MAP, low, high),
                  (exact, f"{name}: exact", COLOUR_MAP, low, high),
                  (error, f"|error|: max {top:.3g}, rel. L2 {rel_l2:.3g}", ERROR_MAP, 0.0, top)]
    fig = Figure(figsize=(4 * len(panels), 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (values, title, cmap, vmin, vmax) in zip(axes, panels, strict=True):
        image = ax.imshow(values, origin="lower", extent=extent, aspect="auto", cmap=cmap,
                          vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-12)
        fig.colorbar(image, ax=ax, format="%.2g")
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel(labels[0])
    axes[0].set_ylabel(labels[1])
    if where:
        fig.suptitle(where, fontsize="small")
    return fig


def field_images(problem: Any, grid: Tensor, pred: Tensor, exact: Tensor | None,
                 shape: tuple[int, ...]) -> dict[str, Any]:
    """``{output name: matplotlib Figure}`` of prediction, exact solution and error on the grid.

    For two inputs the whole grid is shown; for three, the slice at the last input's upper bound
    (the final time of a space-time problem). Problems with other than two or three inputs, or a
    grid that is not ``shape``, give ``{}``. ``exact`` None: the prediction alone. Values that are
    NaN (grid points outside a domain that is not a box) are drawn blank.
    """
    if len(shape) not in (2, 3) or grid.shape[0] != int(np.prod(shape)):
        return {}
    lower, upper = [float(v) for v in problem.lower], [float(v) for v in problem.upper]
    extent = [lower[0], upper[0], lower[1], upper[1]]
    names = tuple(problem.input_names)
    where = f"{names[2]} = {upper[2]:g}" if len(shape) == 3 else ""
    return {name: field_figure(name, _as_image(pred[:, i], shape),
                               None if exact is None else _as_image(exact[:, i], shape), extent,
                               (names[0], names[1]), where)
            for i, name in enumerate(problem.output_names)}


def to_rgb(figure: Any) -> np.ndarray:
    """A figure rendered as an RGB array (H, W, 3) uint8."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
