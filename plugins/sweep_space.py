"""The search space of ``phasetrain sweep``: distributions written as text, and the settings.

``key=distribution`` pairs come from ``--param`` or the ``[params]`` table of a ``--space`` TOML
file: ``uniform(a, b)``, ``loguniform(a, b)``, ``int(a, b)``, ``logint(a, b)`` and
``choice(x, y, ...)``, their arguments read as TOML. Each becomes an Optuna distribution; a
mistake is a :class:`ConfigError` naming where the pair came from and its key.
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from phasetrain.config import FieldValueError, non_negative, one_of, positive
from phasetrain.errors import BadInput, ConfigError

_DIST = re.compile(r"^\s*(uniform|loguniform|int|logint|choice)\s*\((.*)\)\s*$", re.S)


def require_optuna() -> Any:
    """The ``optuna`` module, or a :class:`BadInput` saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise BadInput("phasetrain sweep needs Optuna: pip install 'phasetrain[sweep]' (or: pip install optuna)") from None
    return optuna


def parse_distribution(key: str, text: str, source: str = "--param") -> Any:
    """``"loguniform(1e-4, 1e-1)"`` → an Optuna distribution; a clear error naming ``key``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    found = _DIST.match(text) if isinstance(text, str) else None
    if not found:
        raise ConfigError(source, key, f"expected uniform(a, b), loguniform(a, b), int(a, b), logint(a, b) or "
                                       f"choice(x, y, ...), got {text!r}")
    name, inner = found.groups()
    try:
        args = tomllib.loads(f"v = [{inner}]")["v"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(source, key, f"{name}(...): the arguments must be TOML values, got {inner!r}") from None
    if name == "choice":
        if not args:
            raise ConfigError(source, key, "choice() needs at least one value")
        return CategoricalDistribution([json.dumps(a) if isinstance(a, (list, dict)) else a for a in args])
    numbers = len(args) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if not numbers or not args[0] < args[1]:
        raise ConfigError(source, key, f"{name}(low, high) needs two numbers with low < high, got {inner!r}")
    log = name.startswith("log")
    if log and args[0] <= 0:
        raise ConfigError(source, key, f"{name}(low, high) needs low > 0, got {args[0]!r}")
    if name in ("int", "logint"):
        if not all(isinstance(a, int) for a in args):
            raise ConfigError(source, key, f"{name}(low, high) needs integers, got {inner!r}")
        return IntDistribution(args[0], args[1], log=log)
    return FloatDistribution(float(args[0]), float(args[1]), log=log)


def as_override(key: str, value: Any) -> str:
    """A sampled value as ``--set key=value`` (TOML)."""
    import tomli_w

    return f"{key}={tomli_w.dumps({'v': value}).split('=', 1)[1].strip()}"


def suggest(trial: Any, key: str, dist: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log)


@attrs.define
class SweepSettings:
    """What a ``--space`` file may hold besides ``[params]`` (command-line options win)."""

    trials: int = attrs.field(default=20, validator=positive)  # trials in all, counting finished ones
    jobs: int = attrs.field(default=1, validator=positive)  # trials run at once, each in its own process
    metric: str = "eval_loss"  # the evaluation metric the study optimises
    direction: str = attrs.field(default="minimize", validator=one_of("minimize", "maximize"))
    pruner: str = attrs.field(default="median", validator=one_of("median", "hyperband", "none"))
    sampler: str = attrs.field(default="tpe", validator=one_of("tpe", "random"))
    seed: int = attrs.field(default=0, validator=non_negative)  # of the sampler


def read_space(path: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """A ``--space`` file → (settings, params)."""
    if path is None:
        return {}, {}
    from phasetrain.config import read_file

    data = read_file(Path(path))
    params = data.pop("params", {})
    if not isinstance(params, Mapping):
        raise ConfigError(path, "params", "expected a table of key = \"distribution(...)\"")
    known = {f.name for f in attrs.fields(SweepSettings)}
    if unknown := sorted(set(data) - known):
        raise ConfigError(path, unknown[0], f"unknown key (allowed: params, {', '.join(sorted(known))})")
    return data, dict(params)


def settings_from(args: argparse.Namespace, file_settings: Mapping[str, Any], source: str) -> SweepSettings:
    merged = {**file_settings, **{k: v for k in map(lambda f: f.name, attrs.fields(SweepSettings))
                                  if (v := getattr(args, k, None)) is not None}}
    try:
        return SweepSettings(**merged)
    except (ValueError, TypeError) as exc:
        raise ConfigError(source, exc.field if isinstance(exc, FieldValueError) else "", str(exc)) from None
