"""Sweep specs: a grid of :class:`muonft.spec.RunSpec` runs, validated data.

A :class:`SweepSpec` is a base RunSpec plus grid axes (field path → values; the learning rate may
be given per optimizer, or per ``optimizer/method``), seeds, adaptive-grid settings and worker
counts. ``load_sweep_spec(path)`` reads YAML with ``yaml.safe_load`` and turns every validation
problem into one :class:`~muonft.errors.ConfigError` line naming the field path and what is
allowed.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from muonft.errors import ConfigError
from muonft.spec import (
    METHODS,
    OPTIMIZERS,
    RunSpec,
    cell_key,
    field_paths,
    format_validation_error,
    register_spec_model,
    run_id,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def set_path(d: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Return a copy of nested dict ``d`` with ``path`` (dot-separated) set to ``value``."""
    out = dict(d)
    head, _, rest = path.partition(".")
    if rest:
        out[head] = set_path(dict(out.get(head) or {}), rest, value)
    else:
        out[head] = value
    return out


def get_path(d: dict[str, Any], path: str, default: Any = None) -> Any:
    """Value at dot-separated ``path`` of nested dict ``d`` (``default`` when absent)."""
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


# ---------------------------------------------------------------------------------------------
# Sweeps

class AdaptiveConfig(_Strict):
    """Adaptive LR grids: when a cell's best LR sits at an edge of its grid, add the next LR
    (edge × ``lr_factor`` or edge / ``lr_factor``) to that cell, at most ``max_extensions``
    times per direction. ``lr_factor`` None → the ratio of the cell's two nearest grid LRs."""

    enabled: bool = True
    max_extensions: int = Field(2, ge=0, strict=True)
    lr_factor: float | None = Field(None, gt=1)
    metric: str = "target"


class SweepSpec(_Strict):
    """A grid of runs: ``base`` RunSpec fields, ``grid`` axes (field path → list of values; the
    ``lr`` axis may be a mapping from ``optimizer`` or ``optimizer/method`` to a list), seeds,
    adaptive-grid settings, and the default worker / thread counts."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any] | dict[str, list[Any]]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    adaptive: AdaptiveConfig = AdaptiveConfig()
    workers: int | None = Field(None, ge=0, strict=True)
    threads: int | None = Field(None, gt=0, strict=True)

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, grid: dict[str, Any]) -> dict[str, Any]:
        paths = field_paths()
        for path, values in grid.items():
            if path not in paths:
                raise ValueError(f"unknown grid axis {path!r}; allowed: {', '.join(paths)}")
            if path == "seed":
                raise ValueError("give seeds with the top-level 'seeds' list, not as a grid axis")
            if isinstance(values, dict):
                if path != "lr":
                    raise ValueError(f"only the lr axis may be a per-optimizer mapping, "
                                     f"got a mapping for {path!r}")
                for key, vals in values.items():
                    opt, _, method = key.partition("/")
                    if opt not in OPTIMIZERS or (method and method not in METHODS):
                        raise ValueError(f"lr grid key {key!r} must be an optimizer "
                                         f"{OPTIMIZERS} or optimizer/method with method in "
                                         f"{METHODS}")
                    if not vals:
                        raise ValueError(f"lr grid for {key!r} is empty")
            elif not values:
                raise ValueError(f"grid axis {path!r} has no values")
        return grid

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, seeds: list[int]) -> list[int]:
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct integers >= 0, got {seeds}")
        return seeds


register_spec_model(SweepSpec)


def lr_grid_for(sweep: SweepSpec, point: dict[str, Any]) -> list[float]:
    """The LR values of a grid point (``lr`` axis as a list, or looked up by
    ``optimizer/method`` then ``optimizer``; falls back to ``base.lr``)."""
    axis = sweep.grid.get("lr")
    if axis is None:
        if "lr" not in point:
            raise ConfigError(f"sweep {sweep.name!r}: no lr given; set base.lr or a grid axis lr")
        return [point["lr"]]
    if isinstance(axis, list):
        return list(axis)
    key = f"{point.get('optimizer', 'muon')}/{point.get('method', 'full')}"
    for k in (key, key.split("/")[0]):
        if k in axis:
            return list(axis[k])
    raise ConfigError(f"grid.lr has no entry for {key!r} (keys: {', '.join(axis)}); add "
                      f"{key.split('/')[0]!r} or {key!r}")


def expand(sweep: SweepSpec, extra_lrs: dict[str, list[float]] | None = None) -> list[RunSpec]:
    """Every RunSpec of the sweep, in a stable order, each id once.

    ``extra_lrs`` maps a cell key to LRs added by adaptive extension; they are crossed with every
    seed like the grid's own LRs.
    """
    axes = [(p, v) for p, v in sweep.grid.items() if p != "lr"]
    combos = itertools.product(*[vals for _, vals in axes]) if axes else [()]
    out: dict[str, RunSpec] = {}
    for combo in combos:
        point = dict(sweep.base)
        for (path, _), value in zip(axes, combo):
            point = set_path(point, path, value)
        lrs = lr_grid_for(sweep, point)
        probe = _build(sweep, set_path(point, "lr", lrs[0]))
        lrs = lrs + list((extra_lrs or {}).get(cell_key(probe), []))
        for lr in lrs:
            for seed in sweep.seeds:
                spec = _build(sweep, set_path(set_path(point, "lr", lr), "seed", seed))
                out.setdefault(run_id(spec), spec)
    return list(out.values())


def _build(sweep: SweepSpec, data: dict[str, Any]) -> RunSpec:
    try:
        return RunSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        path = ".".join(str(x) for x in err["loc"])
        where = "grid" if path in sweep.grid or path.split(".")[0] in sweep.grid else "base"
        raise ConfigError(format_validation_error(e, where)) from None


def parse_sweep_spec(data: Any, source: str = "sweep spec") -> SweepSpec:
    """Validate a sweep mapping (from YAML) completely: the sweep's own keys, the base RunSpec
    fields and every expanded grid point. Raises ConfigError with one line naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got "
                          f"{type(data).__name__}")
    try:
        sweep = SweepSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e)}") from None
    base = {**sweep.base, "lr": sweep.base.get("lr", 1.0)}
    try:
        RunSpec.model_validate(base)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e, 'base')}") from None
    n = grid_size(sweep)
    if n > MAX_RUNS:
        raise ConfigError(f"{source}: grid: {n:,} runs exceed the cap of {MAX_RUNS:,}; split the "
                          f"sweep or use fewer values per axis")
    try:
        expand(sweep)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return sweep


MAX_RUNS = 100_000


def grid_size(sweep: SweepSpec) -> int:
    """An upper bound of the runs of ``sweep`` (before duplicates are merged): the product of
    the axes' lengths, the longest LR list and the seeds — computed without expanding."""
    n = len(sweep.seeds)
    for values in sweep.grid.values():
        n *= max(map(len, values.values())) if isinstance(values, dict) else len(values)
    return n


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML file (``yaml.safe_load``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not a UTF-8 text file (byte {e.start}: "
                          f"{e.object[e.start:e.start + 1]!r}); give a YAML sweep spec") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") \
            from None
    return parse_sweep_spec(data, str(path))
