"""Benchmark: PINN derivatives with autograd helpers versus torch.func.

For a tanh MLP (9 hidden layers x 20 units) on N points in 2-D ``(x, t)`` we
compute what the Burgers residual needs -- ``u, u_x, u_t, u_xx`` -- and time
forward + backward of the loss ``mean((u_t + u u_x - nu u_xx)^2)`` with:

* ``helpers (shared)``: one :class:`Derivatives` cache, 2 reverse passes;
* ``helpers (separate)``: independent ``partial`` calls, 4 reverse passes;
* ``torch.func (fused)``: ``vmap(jacfwd(jacrev(u)))`` returning u, grad and Hessian at once;
* ``torch.func (separate)``: ``vmap(jacrev(u))`` for the gradient plus ``vmap(hessian(u))``.

All variants are first checked to agree (float64 derivatives and parameter
gradients).  Timings are interleaved (one repeat of every variant per round)
and the median over rounds is reported.  Results go to stdout as a table and
to ``benchmarks/results/derivatives.json``.

Usage: ``python benchmarks/derivatives.py [--points 10000] [--repeats 15]``
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacfwd, jacrev, vmap

from phasetrain.plugins.pinn.derivatives import Derivatives, partial

NU = 0.01 / math.pi
Quantities = tuple[Tensor, Tensor, Tensor, Tensor]  # u, u_x, u_t, u_xx, each (N,)
Method = Callable[[nn.Module, Tensor], Quantities]


def make_mlp(hidden_layers: int = 9, width: int = 20, seed: int = 0) -> nn.Sequential:
    """tanh MLP (x, t) -> u with ``hidden_layers`` hidden layers of ``width`` units."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(2, width), nn.Tanh()]
    for _ in range(hidden_layers - 1):
        layers += [nn.Linear(width, width), nn.Tanh()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------- methods
def helpers_shared(model: nn.Module, points: Tensor) -> Quantities:
    x = points.detach().requires_grad_()  # (N, 2)
    u = model(x)[:, 0]  # (N,)
    d = Derivatives(u, x)
    return u, d(0), d(1), d(0, 0)


def helpers_separate(model: nn.Module, points: Tensor) -> Quantities:
    x = points.detach().requires_grad_()
    u = model(x)[:, 0]
    return u, partial(u, x, 0), partial(u, x, 1), partial(u, x, 0, 0)


def _pointwise(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """Scalar function of one point z (2,) using the model's (trainable) parameters."""
    params = dict(model.named_parameters())

    def u_point(z: Tensor) -> Tensor:
        return functional_call(model, params, (z[None, :],))[0, 0]

    return u_point


def func_fused(model: nn.Module, points: Tensor) -> Quantities:
    u_point = _pointwise(model)

    def value_aux(z: Tensor) -> tuple[Tensor, Tensor]:
        u = u_point(z)
        return u, u

    def grad_aux(z: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        g, u = jacrev(value_aux, has_aux=True)(z)
        return g, (g, u)

    def all_derivatives(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, (g, u) = jacfwd(grad_aux, has_aux=True)(z)
        return u, g, h

    u, g, h = vmap(all_derivatives)(points)  # (N,), (N, 2), (N, 2, 2)
    return u, g[:, 0], g[:, 1], h[:, 0, 0]


def func_separate(model: nn.Module, points: Tensor) -> Quantities:
    u_point = _pointwise(model)
    u = model(points)[:, 0]
    g = vmap(jacrev(u_point))(points)  # (N, 2)
    h = vmap(hessian(u_point))(points)  # (N, 2, 2)
    return u, g[:, 0], g[:, 1], h[:, 0, 0]


METHODS: dict[str, Method] = {
    "helpers (shared)": helpers_shared,
    "helpers (separate)": helpers_separate,
    "torch.func (fused)": func_fused,
    "torch.func (separate)": func_separate,
}


# ------------------------------------------------------------- measurement
def burgers_loss(q: Quantities) -> Tensor:
    u, u_x, u_t, u_xx = q
    return ((u_t + u * u_x - NU * u_xx) ** 2).mean()


def step(method: Method, model: nn.Module, points: Tensor) -> tuple[Quantities, list[Tensor]]:
    """Forward + backward of the Burgers loss; returns detached quantities and parameter grads."""
    model.zero_grad(set_to_none=True)
    q = method(model, points)
    burgers_loss(q).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    return tuple(t.detach() for t in q), grads  # type: ignore[return-value]


def check_agreement(points: Tensor, rtol: float, atol: float, dtype: torch.dtype) -> dict[str, float]:
    """Max abs difference of every method against ``helpers (shared)``; raises if not allclose."""
    model = make_mlp().to(dtype)
    x = points.to(dtype)
    ref_q, ref_g = step(helpers_shared, model, x)
    report = {}
    for name, method in METHODS.items():
        q, g = step(method, model, x)
        worst = 0.0
        for a, b in zip((*q, *g), (*ref_q, *ref_g)):
            if not torch.allclose(a, b, rtol=rtol, atol=atol):
                raise AssertionError(f"{name} disagrees with helpers (shared) in {dtype}")
            worst = max(worst, float((a - b).abs().max()))
        report[name] = worst
    return report


def time_methods(points: Tensor, repeats: int, warmup: int) -> dict[str, list[float]]:
    model = make_mlp()
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(warmup):
        for method in METHODS.values():
            step(method, model, points)
    for _ in range(repeats):  # interleave so drift affects all methods alike
        for name, method in METHODS.items():
            start = time.perf_counter()
            step(method, model, points)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "derivatives.json")
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    unit = torch.rand(args.points, 2, generator=gen)
    points = torch.stack([2 * unit[:, 0] - 1, unit[:, 1]], dim=1)  # x in [-1, 1], t in [0, 1]

    agreement64 = check_agreement(points[:2000], rtol=1e-9, atol=1e-11, dtype=torch.float64)
    agreement32 = check_agreement(points, rtol=1e-3, atol=1e-5, dtype=torch.float32)
    times = time_methods(points, args.repeats, args.warmup)

    base = statistics.median(times["helpers (shared)"])
    rows = []
    print(f"\nBurgers derivatives (u, u_x, u_t, u_xx) + loss backward, {args.points} points, "
          f"9x20 tanh MLP, float32, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'method':<24}{'median ms':>11}{'min ms':>10}{'vs shared':>11}{'max|diff| f64':>15}")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({
            "method": name,
            "median_ms": 1e3 * med,
            "min_ms": 1e3 * min(ts),
            "times_ms": [1e3 * t for t in ts],
            "relative_to_helpers_shared": med / base,
            "max_abs_diff_float64": agreement64[name],
            "max_abs_diff_float32": agreement32[name],
        })
        print(f"{name:<24}{1e3 * med:>11.1f}{1e3 * min(ts):>10.1f}{med / base:>10.2f}x{agreement64[name]:>15.1e}")

    result = {
        "benchmark": "pinn derivatives for Burgers (u, u_x, u_t, u_xx), forward + backward",
        "points": args.points,
        "model": "MLP 2 -> 9 x 20 tanh -> 1",
        "dtype": "float32 (timing); agreement checked in float64 and float32",
        "repeats": args.repeats,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
