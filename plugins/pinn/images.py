"""Colour images of a PINN's fields on the test grid, for observers that show pictures.

Images are plain ``uint8`` arrays (H, W, 3) so an observer can hand them to any writer
(TensorBoard's ``add_image(..., dataformats="HWC")``, PNG encoders). The colour ramp is built in
(a perceptually ordered dark-blue → teal → yellow ramp), so no plotting library is needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

# Anchor colours of the ramp at 0, 0.25, 0.5, 0.75, 1 (dark blue to yellow).
_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)


def colourise(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map a 2-D array onto the ramp between ``low`` and ``high`` -> (H, W, 3) uint8."""
    span = high - low if high > low else 1.0
    unit = np.clip((values - low) / span, 0.0, 1.0) * (len(_ANCHORS) - 1)
    lower = np.minimum(unit.astype(np.int64), len(_ANCHORS) - 2)
    frac = (unit - lower)[..., None]
    rgb = _ANCHORS[lower] * (1 - frac) + _ANCHORS[lower + 1] * frac
    return np.round(rgb).astype(np.uint8)


def _as_image(column: Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """Grid values (M,) in C order -> (H, W) with the first input along the image's width."""
    field = column.numpy().reshape(shape)
    if field.ndim == 3:  # space-time in 2-D: the slice at the last input's upper bound
        field = field[..., -1]
    # Rows of the image run along the second input (flipped so that it grows upwards).
    return field.T[::-1]


def field_images(
    problem: Any, grid: Tensor, pred: Tensor, exact: Tensor, shape: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """``{"<output>/prediction", "<output>/exact", "<output>/error": (H, W, 3) uint8}``.

    Prediction and exact share one colour scale so they can be compared by eye; the error has
    its own, from 0 to its maximum. Problems with other than two or three inputs give ``{}``.
    """
    if len(shape) not in (2, 3) or grid.shape[0] != int(np.prod(shape)):
        return {}
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(problem.output_names):
        p, e = _as_image(pred[:, i], shape), _as_image(exact[:, i], shape)
        low, high = float(min(p.min(), e.min())), float(max(p.max(), e.max()))
        err = np.abs(p - e)
        out[f"{name}/prediction"] = colourise(p, low, high)
        out[f"{name}/exact"] = colourise(e, low, high)
        out[f"{name}/error"] = colourise(err, 0.0, float(err.max()))
    return out
