"""Run and sweep specs: validated data, hashed into run ids.

A :class:`RunSpec` describes one run completely (what to start from, what to train on, with which
optimizer, method and hyper-parameters). Its id is ``run_id(spec)`` = the first 16 hex digits of
sha256 over the *normalised* spec (JSON with sorted keys, every default filled in, floats written
with 12 significant digits, and settings that cannot change the run removed: LoRA settings of a
full fine-tune, Muon settings of an AdamW run). Identical runs therefore get identical ids, and a
sweep re-run skips what it already has.

A :class:`SweepSpec` is a base RunSpec plus grid axes (field path → values; the learning rate may
be given per optimizer, or per ``optimizer/method``), seeds, adaptive-grid settings and worker
counts. ``load_sweep_spec(path)`` reads YAML with ``yaml.safe_load`` and turns every validation
problem into one :class:`~muonft.errors.ConfigError` line naming the field path and what is
allowed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from muonft.errors import ConfigError

OPTIMIZERS = ("adamw", "muon")
METHODS = ("full", "lora")
SCHEDULES = ("constant", "cosine", "linear")
LORA_VARIANTS = ("lora", "rslora", "pissa", "dora", "olora", "lora_one")
ORTHOGONALIZERS = ("ns5", "polar_express", "gram_ns", "gram_polar_express", "exact_thin",
                   "svd", "exact", "auto")
# Sweep axes whose values identify a run inside its cell rather than the cell itself.
WITHIN_CELL_AXES = ("lr", "seed")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoRAConfig(_Strict):
    """LoRA adapter settings (ignored, and hashed away, when ``method`` is ``full``)."""

    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    variant: Literal["lora", "rslora", "pissa", "dora", "olora", "lora_one"] = "lora"
    targets: tuple[str, ...] | None = None


class MuonConfig(_Strict):
    """Muon settings (ignored, and hashed away, when ``optimizer`` is ``adamw``)."""

    scale: str = Field("match_adamw_rms", min_length=1)
    orthogonalizer: Literal["ns5", "polar_express", "gram_ns", "gram_polar_express",
                            "exact_thin", "svd", "exact", "auto"] = "polar_express"
    ns_steps: int = Field(5, gt=0)
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    adamw_lr_ratio: float = Field(1.0, gt=0)


class RunSpec(_Strict):
    """One run: start point, task, optimizer, method and every hyper-parameter.

    ``kind`` selects the runner (``finetune`` by default; ``pretrain``, ``synthetic`` or any
    kind registered with :func:`muonft.experiments.sweep.register_runner`). ``init`` is a
    ``muonft pretrain`` output dir, a checkpoint name in the cache (``gpt-tiny-adamw-s0``) or
    ``hf:<path-or-id>``. ``update_rank``, ``max_drift`` and ``lora_muon`` are the
    constrained-update Muon options (:class:`muonft.optim.Muon`); ``None`` leaves them off.
    """

    kind: str = Field("finetune", pattern=r"^[a-z][a-z0-9_]*$")
    init: str = Field("gpt-tiny-adamw-s0", min_length=1)
    task: str = Field("lm:rt", min_length=1)
    model: str | None = None
    optimizer: Literal["adamw", "muon"] = "muon"
    method: Literal["full", "lora"] = "full"
    lr: float = Field(gt=0, allow_inf_nan=False)
    steps: int = Field(200, gt=0)
    batch_size: int = Field(16, gt=0)
    block_size: int | None = Field(None, gt=0)
    seed: int = Field(0, ge=0)
    warmup: int = Field(10, ge=0)
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    grad_clip: float | None = Field(1.0, gt=0)
    eval_every: int = Field(50, gt=0)
    eval_batches: int = Field(10, gt=0)
    lora: LoRAConfig = LoRAConfig()
    muon: MuonConfig = MuonConfig()
    update_rank: int | None = Field(None, gt=0)
    max_drift: float | None = Field(None, gt=0)
    lora_muon: Literal["independent", "joint"] | None = None


def _normalise_value(v: Any) -> Any:
    if isinstance(v, float):
        if v == 0 or not math.isfinite(v):
            return 0.0 if v == 0 else v
        return float(f"{v:.12g}")
    if isinstance(v, dict):
        return {k: _normalise_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_normalise_value(x) for x in v]
    return v


def normalise(spec: RunSpec) -> dict[str, Any]:
    """The canonical dict of a run: defaults filled, floats rounded to 12 significant digits,
    and the settings that cannot affect the run removed (``lora`` under ``method: full``,
    ``muon`` under ``optimizer: adamw``)."""
    d = spec.model_dump(mode="json")
    if d["method"] == "full":
        d.pop("lora")
    if d["optimizer"] == "adamw":
        d.pop("muon")
    return _normalise_value(d)


def run_id(spec: RunSpec) -> str:
    """First 16 hex digits of sha256 over ``json.dumps(normalise(spec), sort_keys=True)``."""
    blob = json.dumps(normalise(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cell_key(spec: RunSpec) -> str:
    """The id of a run's *cell*: its normalised spec without ``lr`` and ``seed`` (all runs of an
    LR × seed grid that share every other setting)."""
    d = normalise(spec)
    for k in WITHIN_CELL_AXES:
        d.pop(k, None)
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# Field paths ("lora.rank") over RunSpec

def field_paths() -> list[str]:
    """Every settable field path of a RunSpec (``lr``, ``lora.rank``, ``muon.scale``, ...)."""
    out = []
    for name, f in RunSpec.model_fields.items():
        sub = f.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += [f"{name}.{s}" for s in sub.model_fields]
        else:
            out.append(name)
    return out


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
    max_extensions: int = Field(2, ge=0)
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
    workers: int | None = Field(None, ge=0)
    threads: int | None = Field(None, gt=0)

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


def format_validation_error(e: ValidationError, prefix: str = "") -> str:
    """One line per pydantic error (joined by '; '): field path, problem, offending value, and
    the allowed keys for unknown ones."""
    parts = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(x) for x in (prefix, *err["loc"]) if x != "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(err["loc"][:-1], e.title)
            msg = f"unknown key{'; allowed: ' + ', '.join(allowed) if allowed else ''}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r})"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _allowed_keys(loc: tuple[Any, ...], title: str) -> list[str]:
    models: dict[str, type[BaseModel]] = {"SweepSpec": SweepSpec, "RunSpec": RunSpec}
    model = models.get(title)
    if model is SweepSpec and loc and loc[0] == "base":
        model, loc = RunSpec, loc[1:]
    for part in loc:
        if model is None:
            return []
        f = model.model_fields.get(str(part))
        ann = f.annotation if f else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model else []


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
    try:
        expand(sweep)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return sweep


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML file (``yaml.safe_load``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") \
            from None
    return parse_sweep_spec(data, str(path))
