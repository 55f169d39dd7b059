"""PDE problems with exact solutions, and the ``PROBLEMS`` registry.

This module re-exports the problem API so that callers only need::

    from phasetrain.plugins.pinn.problems import PROBLEMS, test_grid, relative_l2

    problem = PROBLEMS["burgers"](nu=0.01 / math.pi)
    grid = test_grid(problem)                       # (25600, 2) float64
    error = relative_l2(model(grid), problem.exact(grid))

Implementations live in :mod:`.problem_base` (``Condition``, ``Problem``,
helpers), :mod:`.burgers` / :mod:`.burgers_exact`, :mod:`.linear_pdes` and
:mod:`.elastic`, :mod:`.allen_cahn` and :mod:`.poisson_lshape`.
"""

from __future__ import annotations

from .allen_cahn import AllenCahn
from .burgers import Burgers1D, BurgersInverse
from .burgers_exact import burgers_cole_hopf
from .elastic import Elastic2D
from .linear_pdes import Heat1D, Helmholtz2D, Poisson2D, Wave1D
from .poisson_lshape import PoissonLShape
from .problem_base import Condition, Problem, relative_l2, test_grid

__all__ = [
    "Condition",
    "Problem",
    "Burgers1D",
    "Poisson2D",
    "Heat1D",
    "Wave1D",
    "Elastic2D",
    "Helmholtz2D",
    "BurgersInverse",
    "AllenCahn",
    "PoissonLShape",
    "PROBLEMS",
    "burgers_cole_hopf",
    "test_grid",
    "relative_l2",
]

#: Problem classes by name; instantiate with keyword arguments, e.g. ``PROBLEMS["heat1d"](alpha=0.2)``.
PROBLEMS: dict[str, type[Problem]] = {
    cls.name: cls
    for cls in (Burgers1D, Poisson2D, Heat1D, Wave1D, Elastic2D, Helmholtz2D, BurgersInverse, AllenCahn,
                PoissonLShape)
}
