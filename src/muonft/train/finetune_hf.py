"""The fine-tuning recipe for real pretrained HF models (MiniLM, SmolLM2, any ``hf:`` model).

``muonft.train.finetune.finetune`` hands a spec here when its ``init`` is an HF model
(``minilm``, ``smollm2``, ``hf:<path-or-id>``, see :mod:`muonft.models.hf`) or its task is a
classification task (``rt-sentiment``, ``glue:<task>``, ``glue-tsv:<task>:<dir>``). The spec has
the same keys as the GPT recipe's (:func:`muonft.train.finetune.default_spec`), with defaults
suited to pretrained transformers (smaller LRs, batch 32, sequences of at most ``block_size``
tokens), and the run writes the same ``result.json`` record (``docs/CONTRACTS.md``).

Tasks and metrics:

- classification (``rt-sentiment``: fresh/rotten, split by movie): an
  ``AutoModelForSequenceClassification`` head (a new classifier, seeded); ``target`` = accuracy
  on the whole validation split (``higher_is_better``), ``test`` = accuracy on the held-out
  split, ``zero_shot`` = validation accuracy before training. Forgetting is measured on the
  encoder: mean-pooled sentence embeddings of ``N_PROBE`` held-out KJV sentences (outside the
  fine-tuning domain) before and after; ``forgetting`` = 1 − mean cosine(after, before) per
  sentence, and ``similarity_corr`` = Pearson correlation of the pairwise cosine-similarity
  matrices before and after (a similarity-structure probe: 1 = the encoder still ranks which
  sentences are alike as before).
- ``lm:<corpus>``: an ``AutoModelForCausalLM`` trained on the corpus tokenized with the model's
  own tokenizer; ``target``/``test`` = validation/held-out loss, ``relative_ppl`` =
  exp(target − zero_shot); ``forgetting`` = held-out loss after − before on a general-English
  corpus (KJV; RT when the task itself is KJV), also as perplexities.

LoRA goes through :func:`muonft.adapters.apply_lora` (default targets: every attention and MLP
linear by :func:`muonft.diagnostics.layer_group`, which covers BERT and Llama names); a
classifier head stays trainable (it is new). The optimizer is the project's
(:func:`muonft.train.pretrain.build_optimizer`: Muon on hidden matrices with
:mod:`muonft.optim`'s partition, embeddings / norms / biases / classifier on AdamW).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from muonft.atomic import atomic_write_json
from muonft.errors import ConfigError

# Defaults that differ from the GPT recipe's: pretrained transformers want small LRs.
HF_DEFAULTS: dict[str, Any] = {"batch_size": 32, "block_size": 64, "steps": 200, "warmup": 20,
                               "eval_every": 50, "eval_batches": 10}
LM_DEFAULTS: dict[str, Any] = {"batch_size": 8, "block_size": 128}
DEFAULT_LR = {("adamw", "full"): 5e-5, ("muon", "full"): 5e-5,
              ("adamw", "lora"): 1e-3, ("muon", "lora"): 1e-3}
N_PROBE = 256  # held-out sentences for the embedding-drift probe
# The general-English corpus of the forgetting measures, and the one used when the task's
# corpus is that one.
GENERAL_CORPUS, GENERAL_FALLBACK = "kjv", "rt"
EVAL_BATCH = 64
LORA_ONE_BATCHES = 4


def is_hf_spec(spec: dict[str, Any]) -> bool:
    """Whether a fine-tuning spec (or its overrides) belongs to this recipe."""
    from muonft.data.classification import is_classification_task
    from muonft.models.hf import is_hf_init

    return is_hf_init(spec.get("init")) or is_classification_task(str(spec.get("task") or ""))


def default_spec(**overrides: Any) -> dict[str, Any]:
    """A complete, validated spec for an HF fine-tuning run.

    Same keys as the GPT recipe's spec; ``block_size`` is the maximum tokens per sentence
    (classification) or the window length (LM). Options of the GPT spec that this recipe does
    not implement must keep their default value.
    """
    from muonft.adapters import VARIANTS
    from muonft.data.classification import is_classification_task
    from muonft.models.hf import MODEL_SOURCES, is_hf_init
    from muonft.train import finetune as gpt_recipe

    base = gpt_recipe.default_spec()  # the GPT recipe's keys and defaults
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - set(base)
    if unknown:
        raise ConfigError(f"unknown finetune option(s) {sorted(unknown)}; valid: {sorted(base)}")
    spec = {**base, **HF_DEFAULTS, "lr": None, "lora_rank": 8, "lora_alpha": 16.0,
            "lora_variant": "lora", "init": "minilm", "task": "rt-sentiment"}
    spec.update(overrides)
    if spec["init"] == "smollm2" and "task" not in overrides:
        spec["task"] = "lm:rt"
    if str(spec["task"]).startswith("lm:"):  # windows of a token stream, not sentences
        spec.update({k: v for k, v in LM_DEFAULTS.items() if k not in overrides})
    if not is_hf_init(spec["init"]):
        raise ConfigError(f"task {spec['task']!r} needs an HF model init ("
                          f"{', '.join(MODEL_SOURCES)} or hf:<path-or-id>), got {spec['init']!r}")
    task = str(spec["task"])
    if not (task.startswith("lm:") or is_classification_task(task)):
        raise ConfigError(f"task must be lm:<corpus>, rt-sentiment, glue:<task> or "
                          f"glue-tsv:<task>:<dir>, got {task!r}")
    if spec["init"] == "minilm" and task.startswith("lm:"):
        raise ConfigError("minilm is an encoder (BERT); use --task rt-sentiment, or a causal LM "
                          "such as smollm2 for lm:<corpus>")
    if spec["optimizer"] not in ("adamw", "muon"):
        raise ConfigError(f"optimizer must be one of ('adamw', 'muon'), got {spec['optimizer']!r}")
    if spec["method"] not in ("full", "lora"):
        raise ConfigError(f"method must be one of ('full', 'lora'), got {spec['method']!r}")
    if spec["lr"] is None:
        spec["lr"] = DEFAULT_LR[(spec["optimizer"], spec["method"])]
    if not spec["lr"] > 0:
        raise ConfigError(f"lr must be > 0, got {spec['lr']}")
    for k in ("steps", "warmup", "eval_every", "seed"):
        if not isinstance(spec[k], int) or isinstance(spec[k], bool) or spec[k] < 0:
            raise ConfigError(f"{k} must be an integer >= 0, got {spec[k]}")
    for k in ("batch_size", "block_size", "eval_batches"):
        if not isinstance(spec[k], int) or isinstance(spec[k], bool) or spec[k] <= 0:
            raise ConfigError(f"{k} must be a positive integer, got {spec[k]}")
    if spec["method"] == "lora" and spec["lora_variant"] not in VARIANTS:
        raise ConfigError(f"unknown LoRA variant {spec['lora_variant']!r}; choose one of "
                          f"{', '.join(VARIANTS)}")
    if spec["method"] == "full":  # LoRA settings do not change a full fine-tune
        for k in spec:
            if k.startswith("lora_"):
                spec[k] = None
    elif isinstance(spec.get("lora_targets"), (str, tuple)):  # JSON-shaped, like the GPT spec
        t = spec["lora_targets"]
        spec["lora_targets"] = [t] if isinstance(t, str) else list(t)
    ours = {"init", "task", "optimizer", "method", "lr", "steps", "batch_size", "block_size",
            "seed", "weight_decay", "warmup", "schedule", "grad_clip", "eval_every",
            "eval_batches", "lora_rank", "lora_alpha", "lora_variant", "lora_dropout",
            "lora_targets", "scale", "orthogonalizer", "ns_steps", "momentum", "nesterov",
            "adamw_lr_ratio", *gpt_recipe.CONSTRAINT_KEYS}
    gpt_recipe._validate_constraints(spec)
    for k in sorted(set(base) - ours):
        if spec[k] != base[k]:
            raise ConfigError(f"option {k!r} is not supported for HF models yet (got "
                              f"{spec[k]!r}); leave it at {base[k]!r}")
    return spec


# --------------------------------------------------------------------------- tokenizers
def lm_tokenizer(hf_tok: Any, init: str):
    """A :class:`muonft.data.Tokenizer` over an HF fast tokenizer, for cached token streams.

    Its cache key hashes the tokenizer definition, so streams of different models never mix;
    documents end with the model's EOS token.
    """
    from muonft.data.tokens import Tokenizer

    backend = getattr(hf_tok, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{init}: lm tasks need a fast (tokenizers-backed) tokenizer")
    if hf_tok.eos_token_id is None:
        raise ConfigError(f"{init}: the tokenizer has no EOS token to separate documents")
    if len(hf_tok) > 65535:
        raise ConfigError(f"{init}: vocabulary of {len(hf_tok)} does not fit the uint16 "
                          f"token streams")
    digest = hashlib.sha256(backend.to_str().encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9]+", "-", init.removeprefix("hf:")).strip("-")[-40:]

    @dataclass
    class HFTokenizer(Tokenizer):
        eos: int = 0

        @property
        def eos_id(self) -> int:
            return self.eos

        @property
        def vocab_size(self) -> int:
            return len(hf_tok)

        def encode(self, text: str) -> list[int]:
            return list(self.inner.encode(text, add_special_tokens=False).ids)

        def encode_batch(self, texts: list[str]) -> list[list[int]]:
            return [e.ids for e in self.inner.encode_batch(texts, add_special_tokens=False)]

    return HFTokenizer(backend, f"hf-{name}-{digest}", eos=int(hf_tok.eos_token_id))


# --------------------------------------------------------------------------- losses
def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def classification_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
                        ) -> torch.Tensor:
    """Cross-entropy of a sequence classifier on an (x padded with −1, y) batch."""
    x, y = batch
    logits = model(input_ids=x.clamp(min=0), attention_mask=(x >= 0).long()).logits
    return F.cross_entropy(logits.float(), y)


def causal_lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
                   ) -> torch.Tensor:
    """Mean next-token cross-entropy of an HF causal LM on an (x, y = x shifted) batch."""
    x, y = batch
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def classification_accuracy(model: torch.nn.Module, data) -> float:
    """Accuracy of ``model`` over a whole :class:`ClassificationData` split."""
    from muonft.data.classification import accuracy

    was_training = model.training
    model.eval()
    dev = _device(model)
    preds, labels = [], []
    # Length-sorted batches pad far less (RT snippets: 3x faster); accuracy is order-free.
    for x, y in data.batches(EVAL_BATCH, by_length=True):
        x = x.to(dev)
        preds.append(model(input_ids=x.clamp(min=0), attention_mask=(x >= 0).long())
                     .logits.argmax(-1).cpu())
        labels.append(y)
    model.train(was_training)
    return accuracy(torch.cat(preds), torch.cat(labels))


@torch.no_grad()
def lm_loss(model: torch.nn.Module, tokens, block_size: int, max_batches: int | None) -> float:
    """Mean token cross-entropy over consecutive windows of ``tokens`` (no randomness)."""
    from muonft.data import eval_batches

    was_training = model.training
    model.eval()
    dev = _device(model)
    total, n = 0.0, 0
    for x, y in eval_batches(tokens, block_size, 8, max_batches):
        total += float(causal_lm_loss(model, (x.to(dev), y.to(dev)))) * y.numel()
        n += y.numel()
    model.train(was_training)
    return total / max(1, n)


# --------------------------------------------------------------------------- forgetting probe
def probe_sentences(n: int = N_PROBE) -> list[str]:
    """The first ``n`` sentences (5 to 40 words) of the held-out documents of
    :data:`GENERAL_CORPUS` (KJV): general English outside the fine-tuning domain, the same for
    every run."""
    from muonft.data import split_documents

    out: list[str] = []
    for doc in split_documents(GENERAL_CORPUS, "heldout"):
        for s in re.split(r"(?<=[.;:?!])\s+", doc.text):
            if 5 <= len(s.split()) <= 40:
                out.append(s)
                if len(out) == n:
                    return out
    return out


@torch.no_grad()
def sentence_embeddings(encoder: torch.nn.Module, tok: Any, sentences: list[str],
                        max_len: int = 64) -> torch.Tensor:
    """Unit-norm mean-pooled last hidden states (the sentence-transformers recipe), (N, d)."""
    was_training = encoder.training
    encoder.eval()
    dev = _device(encoder)
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # less padding
    embs = []
    for i in range(0, len(order), EVAL_BATCH):
        enc = tok([sentences[j] for j in order[i:i + EVAL_BATCH]], padding=True,
                  truncation=True, max_length=max_len, return_tensors="pt").to(dev)
        h = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                    ).last_hidden_state.float()
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        embs.append(F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1).cpu())
    encoder.train(was_training)
    out = torch.empty(len(order), embs[0].shape[1]) if embs else torch.empty(0)
    if embs:
        out[torch.as_tensor(order)] = torch.cat(embs)
    return out


def embedding_drift(before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """``embedding_cosine`` = mean cosine of each sentence's embedding after vs before;
    ``forgetting`` = 1 − that; ``similarity_corr`` = Pearson correlation of the off-diagonal
    pairwise cosine similarities before vs after."""
    cos = (F.normalize(before, dim=-1) * F.normalize(after, dim=-1)).sum(-1)
    iu = torch.triu_indices(len(before), len(before), offset=1)
    s0 = (before @ before.T)[iu[0], iu[1]]
    s1 = (after @ after.T)[iu[0], iu[1]]
    corr = float(torch.corrcoef(torch.stack([s0, s1]))[0, 1]) if len(s0) > 1 else float("nan")
    return {"embedding_cosine": float(cos.mean()), "forgetting": 1.0 - float(cos.mean()),
            "similarity_corr": corr}


# --------------------------------------------------------------------------- baselines
def _baselines(spec: dict[str, Any], what: str, compute) -> dict[str, Any]:
    """The pre-training measurements of a run (``compute()``: zero-shot metric and the
    forgetting probe's "before" side), cached across runs for the sha-pinned model sources
    (``minilm``, ``smollm2``) by :func:`muonft.train.baselines.cached_measurements`: every LR
    and optimizer of a sweep shares them. The key holds the source's manifest (its files'
    sha256), task, sizes, the seed when a new classifier head is drawn, and the transformers
    version; ``hf:`` inits are always measured."""
    import transformers

    from muonft.models.hf import MANIFEST, MODEL_SOURCES, model_dir
    from muonft.train.baselines import cached_measurements

    if spec["init"] not in MODEL_SOURCES:
        return compute()
    try:
        files = json.loads((model_dir(spec["init"]) / MANIFEST).read_text())
    except (OSError, ValueError):
        return compute()
    key = {"recipe": "hf", "init": spec["init"], "manifest": files, "task": spec["task"],
           "what": what, "block_size": spec["block_size"], "eval_batches": spec["eval_batches"],
           "n_probe": N_PROBE, "eval_batch": EVAL_BATCH,
           "transformers": transformers.__version__,
           "seed": spec["seed"] if what == "classification" else None}
    return cached_measurements(key, compute)


# --------------------------------------------------------------------------- the run
def _trainable_head(model: torch.nn.Module) -> list[str]:
    """Names of the (new) classifier's parameters, kept trainable under LoRA."""
    from muonft.diagnostics import layer_group

    return [n for n, _ in model.named_parameters() if layer_group(n) == "head"]


def finetune_hf(spec: dict[str, Any], out: Path, *, threads: int | None = None,
                progress: bool = True, checkpoint_every: int = 50,
                device: str | None = None) -> dict[str, Any]:
    """Run (or resume, or return the finished) HF fine-tuning described by ``spec``; writes and
    returns the ``result.json`` record. ``device``: ``auto`` (CUDA when available) or a torch
    device; not part of the spec."""
    from muonft.adapters import LoRASpec, apply_lora, merged_state_dict
    from muonft.data.classification import is_classification_task
    from muonft.diagnostics import UpdateRMSTracker, lora_diagnostics, weight_diagnostics
    from muonft.models.hf import load_hf
    from muonft.train.finetune import constraint_metrics, muon_options
    from muonft.train.loop import TrainConfig, best_metrics, resolve_device, train
    from muonft.train.pretrain import build_optimizer

    spec = default_spec(**spec)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output directory {out}: {e.strerror}") from None
    res_path = out / "result.json"
    if res_path.exists():
        prev = json.loads(res_path.read_text())
        if prev.get("spec") != spec:
            diff = sorted(k for k in spec if prev.get("spec", {}).get(k) != spec[k])
            raise ConfigError(f"{out} holds a run with a different spec (differs in {diff}); "
                              f"use another --out or delete it")
        if prev.get("status") in ("done", "diverged"):
            prev["resumed"] = "already finished"
            return prev
    if threads:
        torch.set_num_threads(threads)
    task = spec["task"]
    classify = is_classification_task(task)
    torch.manual_seed(spec["seed"])  # the new classifier's init
    if classify:
        from muonft.data.classification import (
            ClassificationBatcher,
            load_classification,
            num_labels,
        )

        model, tok = load_hf(spec["init"], "seq-cls", num_labels=num_labels(task))
    else:
        model, tok = load_hf(spec["init"], "causal-lm")
    if tok is None:
        raise ConfigError(f"{spec['init']} has no tokenizer; fine-tuning needs one")
    model = model.to(resolve_device(device))
    model.train()
    init_state = {n: p.detach().clone() for n, p in model.named_parameters()}

    bs, block = spec["batch_size"], spec["block_size"]
    if classify:
        train_data = load_classification(task, "train", tok, block)
        val_data = load_classification(task, "val", tok, block)
        test_data = load_classification(task, "heldout", tok, block)
        get_batch = ClassificationBatcher(train_data, bs, seed=spec["seed"]).get
        loss_fn = classification_loss
        probe = probe_sentences()
        before = _baselines(spec, "classification", lambda: {
            "zero_shot": classification_accuracy(model, val_data),
            "emb_before": sentence_embeddings(model.base_model, tok, probe)})
        zero_shot, emb_before = before["zero_shot"], before["emb_before"]

        def eval_fn(m: torch.nn.Module) -> dict[str, float]:
            return {"val_accuracy": classification_accuracy(m, val_data)}
    else:
        from muonft.data import LMBatcher, load_lm_splits

        corpus = task[3:]
        ltok = lm_tokenizer(tok, spec["init"])
        target = load_lm_splits(corpus, ltok)
        forget_corpus = GENERAL_FALLBACK if corpus == GENERAL_CORPUS else GENERAL_CORPUS
        general = load_lm_splits(forget_corpus, ltok)
        get_batch = LMBatcher(target.train, block, bs, seed=spec["seed"]).get
        loss_fn = causal_lm_loss
        n_eval = spec["eval_batches"]
        before = _baselines(spec, f"lm:{forget_corpus}", lambda: {
            "zero_shot": lm_loss(model, target.val, block, n_eval),
            "general_before": lm_loss(model, general.heldout, block, n_eval)})
        zero_shot, general_before = before["zero_shot"], before["general_before"]

        def eval_fn(m: torch.nn.Module) -> dict[str, float]:
            return {"val_loss": lm_loss(m, target.val, block, n_eval)}

    torch.manual_seed(spec["seed"])
    if spec["method"] == "lora":
        grad_fn = None
        if spec["lora_variant"] == "lora_one":
            def grad_fn(m: torch.nn.Module) -> None:
                # Batches from a stream training never reaches (the GPT recipe's convention).
                for i in range(LORA_ONE_BATCHES):
                    batch = tuple(t.to(_device(m)) for t in get_batch(2**32 + i))
                    (loss_fn(m, batch) / LORA_ONE_BATCHES).backward()
        targets = spec.get("lora_targets")
        model = apply_lora(model, LoRASpec(
            rank=spec["lora_rank"], alpha=spec["lora_alpha"], variant=spec["lora_variant"],
            dropout=spec.get("lora_dropout") or 0.0,
            targets=None if targets is None else tuple(targets)), grad_fn=grad_fn)
        head = set(_trainable_head(model))
        for n, p in model.named_parameters():
            if n in head:
                p.requires_grad_(True)
    opt_options = muon_options(spec)
    if spec["lora_muon"] == "joint":
        from muonft.adapters import lora_pairs

        opt_options["lora_pairs"] = lora_pairs(model)
    opt = build_optimizer(model, spec["optimizer"], spec["lr"], spec["weight_decay"],
                          **opt_options)
    watched = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    tracker = UpdateRMSTracker({"matrices": watched})
    tracker.snapshot()

    def on_step(step: int, loss: float) -> None:
        tracker.measure(step)
        tracker.snapshot()

    metric = "val_accuracy" if classify else "val_loss"
    tcfg = TrainConfig(steps=spec["steps"], schedule=spec["schedule"], warmup=spec["warmup"],
                       grad_clip=spec["grad_clip"], eval_every=spec["eval_every"],
                       checkpoint_every=checkpoint_every, progress=progress,
                       best_metric=metric, higher_is_better=classify,
                       description=f"finetune {spec['init']} {spec['method']} "
                                   f"{spec['optimizer']}")
    atomic_write_json(res_path, {"spec": spec, "status": "running"})
    result = train(model, opt, get_batch, tcfg, loss_fn=loss_fn, eval_fn=eval_fn,
                   ckpt_dir=out / "ckpt", spec=spec, on_step=on_step)

    final_v = result["final"].get(metric) if result["status"] == "done" else None
    if classify:  # the loop's final evaluation is this one: not computed twice
        target_v = final_v if final_v is not None else classification_accuracy(model, val_data)
        metrics: dict[str, Any] = {
            "target": target_v, "target_name": "val_accuracy", "higher_is_better": True,
            "zero_shot": zero_shot, "test": classification_accuracy(model, test_data),
            **embedding_drift(emb_before, sentence_embeddings(model.base_model, tok, probe)),
            "forgetting_probe": f"{GENERAL_CORPUS} heldout, {len(probe)} sentences",
        }
    else:
        target_v = final_v if final_v is not None else lm_loss(model, target.val, block, n_eval)
        general_after = lm_loss(model, general.heldout, block, n_eval)
        metrics = {
            "target": target_v, "target_name": "val_loss", "higher_is_better": False,
            "zero_shot": zero_shot, "relative_ppl": math.exp(target_v - zero_shot),
            "test": lm_loss(model, target.heldout, block, n_eval),
            "forgetting": general_after - general_before,
            "pretrain_loss_before": general_before, "pretrain_loss_after": general_after,
            "pretrain_ppl_before": math.exp(general_before),
            "pretrain_ppl_after": math.exp(general_after),
            "forgetting_corpus": forget_corpus,
        }
    metrics["update_rms"] = tracker.summary().get("matrices", 0.0)
    metrics.update(constraint_metrics(opt, spec))
    metrics.update(best_metrics(result, metric))
    if spec["method"] == "lora":
        final = merged_state_dict(model)
    else:
        final = {n: p.detach() for n, p in model.named_parameters()}
    now = {n: final[n] for n in init_state}
    record: dict[str, Any] = {
        "status": result["status"], "spec": spec, "metrics": metrics,
        "diagnostics": weight_diagnostics(now, init_state),
        "diagnostics_update": weight_diagnostics(now, init_state, update=True),
        "curves": result["curves"], "best": result["best"], "timings": result["timings"],
        "versions": _versions(), "error": None,
    }
    if spec["method"] == "lora":
        record["diagnostics_lora"] = lora_diagnostics(model)
    atomic_write_json(res_path, record)
    return record


def _versions() -> dict[str, str]:
    import transformers

    from muonft import __version__ as muonft_version

    return {"muonft": muonft_version, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}
