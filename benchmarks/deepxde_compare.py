"""phasetrain and DeepXDE side by side: the same PINN problems, point counts, networks, optimizers
and time budget, in one run; relative L2 error (and coefficient error) against wall time.

DeepXDE is an optional extra (``pip install -c constraints.txt -e ".[deepxde]"``), run with its
PyTorch backend; phasetrain never imports it. Each (problem, framework, seed) trains in a process
of its own with the same number of torch threads. Problems:

* ``burgers``: viscous Burgers, Raissi et al.'s network (8 x 20 tanh), 10,000 Sobol' collocation
  points, 256 initial and 256 boundary points, Adam then L-BFGS (DeepXDE's Burgers example with
  phasetrain's ``burgers`` preset's sizes);
* ``allen-cahn``: DeepXDE's Allen–Cahn example (output transform
  ``x^2 cos(pi x) + t (1 - x^2) N`` for the initial condition and ``u(+-1, t) = -1``, 8,000
  points), against phasetrain's spectral reference; phasetrain uses the same transform
  (``task.hard_constraints``, ``hard = "initial"``) and drops the periodic term as DeepXDE's
  example has none;
* ``diffusion-inverse``: DeepXDE's ``diffusion_1d_inverse`` example: ``u_t = C u_xx + f`` with C
  unknown (true 1, start 2), 10 observations at t = 1, 40 domain points; phasetrain solves it with
  a residual plugin defined in this file.

Errors are measured at a fixed cadence of training time on each problem's test grid (the time
spent measuring is excluded on both sides); the table gives the error at the end of the budget,
the first time each threshold was reached, and the coefficient's error.

    python benchmarks/deepxde_compare.py                       # all problems, full budgets, 3 seeds
    python benchmarks/deepxde_compare.py --quick               # 30 s per run, one seed: a smoke test
    python benchmarks/deepxde_compare.py --problems burgers --budget 300 --seeds 0 1 2

Writes benchmarks/results/deepxde-compare.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Per problem: network, points, Adam steps and learning rate, L-BFGS, default budget (s), cadence (s).
SPEC = {
    "burgers": dict(hidden=20, depth=8, domain=10_000, boundary=256, initial=256, adam=1000, lr=1e-3,
                    lbfgs_iter=10, history=50, budget=300.0, every=10.0),
    "allen-cahn": dict(hidden=20, depth=3, domain=8000, boundary=400, initial=800, adam=5000, lr=1e-3,
                       lbfgs_iter=10, history=50, budget=600.0, every=20.0),
    "diffusion-inverse": dict(hidden=32, depth=3, domain=40, boundary=20, initial=10, adam=100_000, lr=1e-3,
                              lbfgs_iter=0, history=50, budget=60.0, every=2.0),
}
THRESHOLDS = (1e-1, 1e-2, 1e-3)


# ---------------------------------------------------------------------------------------------
# The diffusion inverse problem as a phasetrain residual plugin
# ---------------------------------------------------------------------------------------------


def diffusion_plugin():
    """A ``residual`` plugin for DeepXDE's diffusion_1d_inverse example (built on first use)."""
    from phasetrain import Component, hookimpl
    from phasetrain.plugins.pinn.conditions import initial, observations
    from phasetrain.plugins.pinn.derivatives import Derivatives
    from phasetrain.plugins.pinn.inverse import Unknown
    from phasetrain.plugins.pinn.problem_base import Condition, Problem
    from phasetrain.registry import plugin

    class DiffusionInverse(Problem):
        """u_t = C u_xx - e^-t (sin(pi x) - pi^2 sin(pi x)) on [-1, 1] x [0, 1]; u = e^-t sin(pi x); C = 1."""

        name, input_names, output_names = "diffusion-inverse", ("x", "t"), ("u",)
        lower, upper, default_grid = (-1.0, 0.0), (1.0, 1.0), (101, 101)

        def __init__(self) -> None:
            super().__init__()
            self.unknowns = {"C": Unknown(2.0, 1.0)}

        def exact(self, x):
            return (torch.exp(-x[:, 1]) * torch.sin(math.pi * x[:, 0]))[:, None]

        def residual(self, x, u):
            d = Derivatives(u, x)
            s = torch.sin(math.pi * x[:, 0])
            return (d(1) - self.coefficient("C") * d(0, 0) + torch.exp(-x[:, 1]) * (s - math.pi**2 * s))[:, None]

        def conditions(self):
            def where(n, _generator):  # the example's 10 measurement points at t = 1
                return torch.stack([torch.linspace(-1, 1, 10, dtype=torch.float64), torch.ones(10).double()], 1)

            # DeepXDE's example also adds the measurement points to its collocation points
            # (``anchors=observe_x``): here, the PDE residual at those points as a condition.
            return [self._dirichlet_from_exact("boundary"),
                    initial("initial", self, lambda x: torch.sin(math.pi * x[:, :1])),
                    observations("data", self, 10, sample=where),
                    Condition("anchors", where, self.residual, points=10)]

    class Plugin:
        @hookimpl
        def phasetrain_components(self):
            return [Component("residual", "diffusion-inverse", lambda _options, _ctx: DiffusionInverse())]

    return plugin(Plugin(), "diffusion-inverse", "benchmarks/deepxde_compare.py")


def reference(problem: str):
    """The phasetrain problem that defines the test grid and the exact or reference solution."""
    from phasetrain.plugins.pinn.problems import PROBLEMS

    if problem == "diffusion-inverse":
        plugin = diffusion_plugin()
        return plugin.plugin.phasetrain_components()[0].factory(None, None)
    return PROBLEMS[problem]()


# ---------------------------------------------------------------------------------------------
# phasetrain
# ---------------------------------------------------------------------------------------------


def run_phasetrain(problem: str, seed: int, budget: float, every: float, threads: int) -> dict:
    import phasetrain
    from pinn_curve import Curve

    s = SPEC[problem]
    stages = f"{{name='adam', steps={s['adam']}}}"
    if s["lbfgs_iter"]:
        stages += (f", {{name='lbfgs', optimizer={{use='lbfgs', max_iter={s['lbfgs_iter']}, "
                   f"history_size={s['history']}, tolerance_grad=0.0, tolerance_change=0.0}}}}")
    data = {"task": {"use": "pinn"}, "residual": {"use": problem}}
    sets = [f"run.seed={seed}", f"run.threads={threads}", "run.steps=10000000", "run.eval_every=0",
            "run.checkpoint_every=0", "observers.console.quiet=true", f"run.out_dir='runs/bench-deepxde/{problem}/{{version}}'",
            f"task.hidden={s['hidden']}", f"task.depth={s['depth']}", "task.dtype='float32'",
            f"task.n_initial={s['initial']}", f"task.n_boundary={s['boundary']}",
            f"sampler={{use='sobol', n={s['domain']}}}", f"optimizer={{use='adam', lr={s['lr']}}}",
            f"schedule={{use='staged', stages=[{stages}]}}"]
    plugins = []
    if problem == "allen-cahn":
        sets += ["task.hard_constraints=true", "residual.hard='initial'", "task.weights={periodic=0.0}"]
    if problem == "diffusion-inverse":
        plugins.append(diffusion_plugin())
    curve = Curve(every, budget)
    trainer = phasetrain.Trainer.from_config(data, sets, plugins=[*plugins, curve])
    trainer.fit()
    return {"curve": curve.points}


# ---------------------------------------------------------------------------------------------
# DeepXDE
# ---------------------------------------------------------------------------------------------


def run_deepxde(problem: str, seed: int, budget: float, every: float, threads: int) -> dict:
    os.environ["DDE_BACKEND"] = "pytorch"
    import deepxde as dde
    import numpy as np

    from phasetrain.plugins.pinn.problem_base import relative_l2, test_grid

    s = SPEC[problem]
    dde.config.set_default_float("float32")
    dde.config.set_random_seed(seed)
    ref = reference(problem)
    grid = test_grid(ref)
    exact = ref.exact(grid)
    grid32 = grid.numpy().astype(np.float32)
    geom = dde.geometry.Interval(-1, 1)
    geomtime = dde.geometry.GeometryXTime(geom, dde.geometry.TimeDomain(0, 1))
    net = dde.nn.FNN([2] + [s["hidden"]] * s["depth"] + [1], "tanh", "Glorot normal")
    variables: list = []

    if problem == "burgers":
        nu = 0.01 / math.pi

        def pde(x, y):
            dy_x = dde.grad.jacobian(y, x, i=0, j=0)
            dy_t = dde.grad.jacobian(y, x, i=0, j=1)
            dy_xx = dde.grad.hessian(y, x, i=0, j=0)
            return dy_t + y * dy_x - nu * dy_xx

        bc = dde.icbc.DirichletBC(geomtime, lambda x: 0, lambda _, on_boundary: on_boundary)
        ic = dde.icbc.IC(geomtime, lambda x: -np.sin(np.pi * x[:, 0:1]), lambda _, on_initial: on_initial)
        data = dde.data.TimePDE(geomtime, pde, [bc, ic], num_domain=s["domain"], num_boundary=s["boundary"],
                                num_initial=s["initial"], train_distribution="Sobol")
    elif problem == "allen-cahn":
        eps = 1e-4

        def pde(x, y):
            dy_t = dde.grad.jacobian(y, x, i=0, j=1)
            dy_xx = dde.grad.hessian(y, x, i=0, j=0)
            return dy_t - eps * dy_xx - 5 * (y - y**3)

        def transform(x, y):
            xs, t = x[:, 0:1], x[:, 1:2]
            return xs**2 * torch.cos(np.pi * xs) + t * (1 - xs**2) * y

        net.apply_output_transform(transform)
        data = dde.data.TimePDE(geomtime, pde, [], num_domain=s["domain"], num_boundary=s["boundary"],
                                num_initial=s["initial"], train_distribution="Sobol")
    else:
        C = dde.Variable(2.0)
        variables = [C]

        def pde(x, y):
            dy_t = dde.grad.jacobian(y, x, i=0, j=1)
            dy_xx = dde.grad.hessian(y, x, i=0, j=0)
            sx, et = torch.sin(np.pi * x[:, 0:1]), torch.exp(-x[:, 1:2])
            return dy_t - C * dy_xx + et * (sx - np.pi**2 * sx)

        def solution(x):
            return np.sin(np.pi * x[:, 0:1]) * np.exp(-x[:, 1:])

        observe = np.vstack((np.linspace(-1, 1, num=10), np.full(10, 1.0))).T
        bc = dde.icbc.DirichletBC(geomtime, solution, lambda _, on_boundary: on_boundary)
        ic = dde.icbc.IC(geomtime, solution, lambda _, on_initial: on_initial)
        observed = dde.icbc.PointSetBC(observe, solution(observe), component=0)
        data = dde.data.TimePDE(geomtime, pde, [bc, ic, observed], num_domain=s["domain"],
                                num_boundary=s["boundary"], num_initial=s["initial"], anchors=observe,
                                solution=solution, num_test=100, train_distribution="Sobol")

    model = dde.Model(data, net)
    points: list[dict] = []

    class Curve(dde.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.start, self.cpu, self.paused, self.last, self.steps = None, 0.0, (0.0, 0.0), -1e9, 0

        def on_epoch_end(self) -> None:
            if self.start is None:
                self.start, self.cpu = time.perf_counter(), time.process_time()
            self.steps += 1
            wall = time.perf_counter() - self.start - self.paused[0]
            cpu = time.process_time() - self.cpu - self.paused[1]
            done = wall >= budget
            if wall - self.last >= every or done:
                began, began_cpu = time.perf_counter(), time.process_time()
                pred = torch.as_tensor(self.model.predict(grid32), dtype=torch.float64)
                point = {"wall_s": wall, "cpu_s": cpu, "steps": self.steps, "rel_l2": relative_l2(pred, exact)}
                if variables:
                    value = float(variables[0].detach())
                    point.update(coef_C=value, coef_C_error=abs(value - 1.0))
                points.append(point)
                print(json.dumps(point), file=sys.stderr, flush=True)
                self.last = wall
                self.paused = (self.paused[0] + time.perf_counter() - began,
                               self.paused[1] + time.process_time() - began_cpu)
            if done:
                self.model.stop_training = True

    curve = Curve()
    extra = {"external_trainable_variables": variables} if variables else {}
    model.compile("adam", lr=s["lr"], **extra)
    model.train(iterations=s["adam"], callbacks=[curve], display_every=10**9, verbose=0)
    if s["lbfgs_iter"] and not model.stop_training:
        dde.optimizers.set_LBFGS_options(maxcor=s["history"], ftol=0, gtol=0, maxiter=10**8)
        dde.optimizers.config.LBFGS_options["iter_per_step"] = s["lbfgs_iter"]
        dde.optimizers.config.LBFGS_options["fun_per_step"] = int(1.25 * s["lbfgs_iter"])
        model.compile("L-BFGS", **extra)
        model.train(callbacks=[curve], verbose=0)
    return {"curve": points}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def child(framework: str, problem: str, seed: int, budget: float, every: float, threads: int) -> dict:
    torch.set_num_threads(threads)
    runner = run_phasetrain if framework == "phasetrain" else run_deepxde
    out = runner(problem, seed, budget, every, threads)
    return {"framework": framework, "problem": problem, "seed": seed, **out}


def summary(run: dict) -> dict:
    curve = run["curve"]
    last = curve[-1] if curve else {}
    row = {"rel_l2": last.get("rel_l2"), "wall_s": last.get("wall_s"), "coef_error": last.get("coef_C_error")}
    for threshold in THRESHOLDS:
        hit = next((p for p in curve if p["rel_l2"] is not None and p["rel_l2"] <= threshold), None)
        row[f"to_{threshold:g}"] = None if hit is None else hit["wall_s"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", nargs="*", default=list(SPEC))
    p.add_argument("--frameworks", nargs="*", default=["phasetrain", "deepxde"])
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--budget", type=float, default=0.0, help="seconds per run (0: each problem's own)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="30 s per run, one seed")
    p.add_argument("--out", default="benchmarks/results/deepxde-compare.json")
    p.add_argument("--child", nargs=6, metavar=("FRAMEWORK", "PROBLEM", "SEED", "BUDGET", "EVERY", "THREADS"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        fw, problem, seed, budget, every, threads = args.child
        print(json.dumps(child(fw, problem, int(seed), float(budget), float(every), int(threads))))
        return
    seeds = args.seeds[:1] if args.quick else args.seeds
    result = {"torch": torch.__version__, "platform": platform.platform(), "cpus": os.cpu_count(),
              "threads": args.threads, "quick": args.quick, "runs": []}
    print(f"{'problem':<18} {'framework':<10} {'seed':>4} {'budget s':>8} {'rel L2':>9} "
          + " ".join(f"{'to ' + format(t, 'g'):>8}" for t in THRESHOLDS) + f" {'coef err':>9} {'load':>5}")
    for problem in args.problems:
        spec = SPEC[problem]
        budget = 30.0 if args.quick else (args.budget or spec["budget"])
        every = min(spec["every"], budget / 10)
        for seed in seeds:
            for framework in args.frameworks:
                load = os.getloadavg()[0]
                cmd = [sys.executable, __file__, "--child", framework, problem, str(seed), str(budget), str(every),
                       str(args.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ,
                                                                                         "DDE_BACKEND": "pytorch"})
                if done.returncode != 0:
                    raise SystemExit(f"{framework} on {problem} failed:\n{done.stderr[-3000:]}")
                run = json.loads(done.stdout.strip().splitlines()[-1])
                run.update(budget_s=budget, load_avg_before=load, load_avg_after=os.getloadavg()[0],
                           summary=summary(run))
                result["runs"].append(run)
                row = run["summary"]
                fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
                print(f"{problem:<18} {framework:<10} {seed:>4} {budget:>8.0f} {fmt(row['rel_l2']):>9} "
                      + " ".join(f"{fmt(row[f'to_{t:g}']):>8}" for t in THRESHOLDS)
                      + f" {fmt(row['coef_error']):>9} {load:>5.1f}", flush=True)
        for framework in args.frameworks:
            errors = [r["summary"]["rel_l2"] for r in result["runs"]
                      if r["problem"] == problem and r["framework"] == framework and r["summary"]["rel_l2"]]
            if errors:
                print(f"{problem:<18} {framework:<10} median rel L2 over {len(errors)} seed(s): "
                      f"{statistics.median(errors):.3g}")
    out = Path(args.out)
    out = out if out.is_absolute() else ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
