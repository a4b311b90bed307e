"""The run spec: one typed description of a run, hashed into its id.

A :class:`RunSpec` describes one run completely: what it starts from (``init``), what it trains
on (``task``), the optimizer (``optimizer``, ``lr``, ``weight_decay`` and the Muon settings of
:class:`MuonConfig`), the method (``full`` or ``lora`` with :class:`LoRAConfig`), the schedule
(``steps``, ``warmup``, ``schedule``, ``grad_clip``), the batches (``batch_size``,
``block_size``), evaluation (``eval_every``, ``eval_batches``) and diagnostics
(``diag_every``). Every part of muonft — the CLI, ``muonft sweep``, ``muonft reproduce``, the
runners and the fine-tuning skeleton — passes this object; defaults are written here once
(a model family's own defaults, such as MiniLM's smaller LR, live in its plugin).

Its id is ``run_id(spec)`` = the first 16 hex digits of sha256 over the *normalised* spec (JSON
with sorted keys, every default filled in, floats written with 12 significant digits, and
settings that cannot change the run removed: LoRA settings of a full fine-tune, Muon settings of
an AdamW run, and fields added after the first results stores at their default value — so runs
stored by earlier versions keep their ids). :meth:`RunSpec.from_options` reads the flat option
names of ``muonft finetune`` (``lora_rank``, ``orthogonalizer``, …), which is also the form
older ``result.json`` files stored (the migration).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from muonft.errors import ConfigError

OPTIMIZERS = ("adamw", "muon")
METHODS = ("full", "lora")
# Fields added after the first results stores: hashed only when they differ from the default.
_ADDED_FIELDS = {"diag_every": 0}
# Sweep axes whose values identify a run inside its cell rather than the cell itself.
WITHIN_CELL_AXES = ("lr", "seed")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bools_as_numbers(cls, data: Any) -> Any:
        """``true`` is not a number (pydantic would read it as 1.0); integer fields are
        strict already."""
        if isinstance(data, dict):
            for name in cls.model_fields:
                if isinstance(data.get(name), bool) and name in ("lr", "weight_decay",
                                                                 "grad_clip", "max_drift",
                                                                 "alpha", "dropout", "momentum",
                                                                 "adamw_lr_ratio"):
                    raise ValueError(f"{name}: expected a number, got {data[name]!r}")
        return data


class LoRAConfig(_Strict):
    """LoRA adapter settings (ignored, and hashed away, when ``method`` is ``full``).

    ``variant``: plain ``lora``, ``rslora`` (α/√r scaling), ``pissa`` / ``olora`` (SVD / QR
    initialisation), ``dora`` (weight decomposition) or ``lora_one`` (factors from the first
    gradient); ``targets``: module name patterns or layer groups (default: every attention and
    MLP matrix). ``alpha``: a number, or ``"2r"`` (the study's rank sweeps: α = 2·rank, so the
    scaling α/r is 2 at every rank)."""

    rank: int = Field(8, gt=0, strict=True)
    alpha: Annotated[float, Field(gt=0, allow_inf_nan=False)] | Literal["2r"] = 16.0
    dropout: float = Field(0.0, ge=0, lt=1)
    variant: Literal["lora", "rslora", "pissa", "dora", "olora", "lora_one"] = "lora"
    targets: tuple[str, ...] | None = None

    @property
    def alpha_value(self) -> float:
        """α as a number (2·rank under the ``"2r"`` rule)."""
        return 2.0 * self.rank if self.alpha == "2r" else float(self.alpha)


class MuonConfig(_Strict):
    """Muon settings (ignored, and hashed away, when ``optimizer`` is ``adamw``).

    ``scale``: the update-scale rule (``match_adamw_rms`` = 0.2·√max(m, n), ``spectral``,
    ``lora_balanced``, ``none``); ``orthogonalizer``: how the momentum's polar factor is
    computed; the AdamW groups of a Muon run (embeddings, norms, biases, head) use
    lr · ``adamw_lr_ratio``."""

    scale: str = Field("match_adamw_rms", min_length=1)
    orthogonalizer: Literal["ns5", "polar_express", "gram_ns", "gram_polar_express",
                            "exact_thin", "svd", "exact", "auto"] = "polar_express"
    ns_steps: int = Field(5, gt=0, strict=True)
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    adamw_lr_ratio: float = Field(1.0, gt=0, allow_inf_nan=False)

    def optimizer_kwargs(self, lr: float) -> dict[str, Any]:
        """Keyword arguments of :class:`muonft.optim.Muon` for these settings at ``lr``."""
        return {"scale": self.scale, "orthogonalizer": self.orthogonalizer,
                "ns_steps": self.ns_steps, "momentum": self.momentum,
                "nesterov": self.nesterov, "adamw_lr": lr * self.adamw_lr_ratio}


class RunSpec(_Strict):
    """One run: start point, task, optimizer, method and every hyper-parameter.

    ``kind`` selects the runner (``finetune`` by default; ``vision`` is the same fine-tuning
    skeleton under its older name; ``pretrain``, ``synthetic`` or any kind registered with
    :func:`muonft.experiments.runners.register_runner`). ``init`` is a ``muonft pretrain``
    output dir, a checkpoint name in the cache (``gpt-tiny-adamw-s0``), a named HF source
    (``minilm``, ``smollm2``) or ``hf:<path-or-id>``. ``block_size`` ``None`` is the model
    family's default. ``update_rank``, ``max_drift`` and ``lora_muon`` are the constrained-update
    Muon options (:class:`muonft.optim.Muon`); ``None`` leaves them off. ``diag_every`` = N > 0
    records the overall diagnostics every N steps as curves.
    """

    kind: str = Field("finetune", pattern=r"^[a-z][a-z0-9_]*$")
    init: str = Field("gpt-tiny-adamw-s0", min_length=1)
    task: str = Field("lm:rt", min_length=1)
    model: str | None = None
    optimizer: Literal["adamw", "muon"] = "muon"
    method: Literal["full", "lora"] = "full"
    lr: float = Field(gt=0, le=1e4, allow_inf_nan=False)
    steps: int = Field(200, ge=0, strict=True)
    batch_size: int = Field(16, gt=0, strict=True)
    block_size: int | None = Field(None, gt=0, strict=True)
    seed: int = Field(0, ge=0, lt=2**63, strict=True)
    warmup: int = Field(10, ge=0, strict=True)
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    weight_decay: float = Field(0.0, ge=0, le=1e4, allow_inf_nan=False)
    grad_clip: float | None = Field(1.0, gt=0, allow_inf_nan=False)
    eval_every: int = Field(50, ge=0, strict=True)
    eval_batches: int = Field(10, gt=0, strict=True)
    lora: LoRAConfig = LoRAConfig()
    muon: MuonConfig = MuonConfig()
    update_rank: int | None = Field(None, gt=0, strict=True)
    max_drift: float | None = Field(None, gt=0, allow_inf_nan=False)
    lora_muon: Literal["independent", "joint"] | None = None
    diag_every: int = Field(0, ge=0, strict=True)

    @model_validator(mode="after")
    def _check_constraints(self) -> RunSpec:
        given = [k for k in ("update_rank", "max_drift", "lora_muon") if getattr(self, k)]
        if given and self.optimizer != "muon":
            raise ValueError(f"{', '.join(given)}: Muon options; use optimizer muon")
        if self.lora_muon == "joint" and self.method != "lora":
            raise ValueError("lora_muon 'joint' steps LoRA factor pairs; use method lora")
        if self.max_drift is not None and self.method == "lora":
            raise ValueError("max_drift bounds full weights (a LoRA B starting at zero would "
                             "stay there); use method full")
        return self

    @property
    def constrained(self) -> bool:
        """Whether a constrained-update option that changes the Muon step is on."""
        return self.update_rank is not None or self.max_drift is not None

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`muonft.optim.Muon` beyond ``lr`` and ``weight_decay``
        (empty under AdamW); ``lora_muon="joint"`` also needs ``lora_pairs``, which only the
        model can give."""
        if self.optimizer != "muon":
            return {}
        kw = self.muon.optimizer_kwargs(self.lr)
        kw.update({k: getattr(self, k) for k in ("update_rank", "max_drift", "lora_muon")
                   if getattr(self, k) is not None})
        return kw

    @classmethod
    def from_options(cls, **options: Any) -> RunSpec:
        """A RunSpec from the flat option names of ``muonft finetune`` and of ``result.json``
        files written before the typed spec: ``lora_rank``/``lora_alpha``/``lora_variant``/
        ``lora_dropout``/``lora_targets`` → ``lora.*``; ``scale``/``orthogonalizer``/
        ``ns_steps``/``momentum``/``nesterov``/``adamw_lr_ratio`` → ``muon.*``. ``None`` means
        "default"; unknown names are refused (ConfigError naming them and the valid ones)."""
        data: dict[str, Any] = {"lora": {}, "muon": {}}
        unknown = []
        for k, v in options.items():
            if v is None:
                continue
            if k.startswith("lora_") and k != "lora_muon" and k[5:] in LoRAConfig.model_fields:
                data["lora"][k[5:]] = v
            elif k in MuonConfig.model_fields:
                data["muon"][k] = v
            elif k in cls.model_fields and k not in ("lora", "muon"):
                data[k] = v
            else:
                unknown.append(k)
        if unknown:
            valid = sorted([*(f for f in cls.model_fields if f not in ("lora", "muon")),
                            *(f"lora_{f}" for f in LoRAConfig.model_fields),
                            *MuonConfig.model_fields])
            raise ConfigError(f"unknown finetune option(s) {sorted(unknown)}; valid: "
                              f"{', '.join(valid)}")
        return validated(cls, data)


def validated(model: type[BaseModel], data: Any, where: str = "") -> Any:
    """``model.model_validate(data)``, every problem as one ConfigError line (field path,
    problem, offending value)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None


def format_validation_error(e: ValidationError, prefix: str = "") -> str:
    """One line per pydantic error (joined by '; '): field path, problem, offending value, and
    the allowed keys for unknown ones."""
    parts = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(x) for x in (prefix, *err["loc"]) if x != "")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = allowed_keys(err["loc"][:-1], e.title)
            msg = f"unknown key{'; allowed: ' + ', '.join(allowed) if allowed else ''}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


_MODELS: dict[str, type[BaseModel]] = {"RunSpec": RunSpec}


def register_spec_model(model: type[BaseModel]) -> None:
    """Let :func:`format_validation_error` list the allowed keys of ``model``'s errors."""
    _MODELS[model.__name__] = model


def allowed_keys(loc: tuple[Any, ...], title: str) -> list[str]:
    """The field names allowed at ``loc`` inside the registered model called ``title`` (a
    ``base`` mapping of a sweep is a RunSpec)."""
    model = _MODELS.get(title)
    if model is not RunSpec and loc and loc[0] == "base":
        model, loc = RunSpec, loc[1:]
    for part in loc:
        if model is None:
            return []
        f = model.model_fields.get(str(part))
        ann = f.annotation if f else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model else []


# ---------------------------------------------------------------------------------------------
# Normal form and ids

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
    ``muon`` under ``optimizer: adamw``, later-added fields at their default)."""
    d = spec.model_dump(mode="json")
    if d["method"] == "full":
        d.pop("lora")
    if d["optimizer"] == "adamw":
        d.pop("muon")
    for k, default in _ADDED_FIELDS.items():
        if d.get(k) == default:
            d.pop(k)
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


def same_run(a: RunSpec, b: RunSpec) -> list[str]:
    """The normalised fields in which two specs differ (``kind`` aside: ``finetune`` and
    ``vision`` name the same skeleton); empty when they describe the same run."""
    na, nb = normalise(a), normalise(b)
    return sorted(k for k in set(na) | set(nb) if k != "kind" and na.get(k) != nb.get(k))


def stored_spec(data: Any) -> RunSpec | None:
    """The RunSpec of a ``result.json``'s ``spec``: today's nested form, or the flat form of
    earlier versions (migrated by :meth:`RunSpec.from_options`); ``None`` when it is neither."""
    if not isinstance(data, dict):
        return None
    try:
        if "lora" in data or "muon" in data or "kind" in data:
            return RunSpec.model_validate(data)
        return RunSpec.from_options(**data)
    except (ValidationError, ConfigError):
        return None


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
