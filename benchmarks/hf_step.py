"""Full fine-tuning step time of a MiniLM-sized BERT classifier: our Muon vs AdamW vs
``torch.optim.Muon``.

Issue 7's target: a MiniLM full fine-tuning step (batch 32, sequence 48) with Muon at most
1.10x the AdamW step. The model is all-MiniLM-L6-v2's architecture (6 layers, d=384, 12 heads,
MLP 1536, vocabulary 30522) with a 2-way classification head; the real weights are used when
``muonft data fetch minilm`` has cached them, else a random init of the same shapes (step time
does not depend on the values). Whole steps (forward, backward, clip, optimizer step) are timed
in alternation — AdamW, then each Muon variant, in rotating order — so load changes on a shared
CPU hit them alike; each round reports the median step of each and the ratio is per round.

Peers: ``torch.optim.AdamW(foreach=True)`` for every parameter; ``torch.optim.Muon`` (NS5,
``adjust_lr_fn="match_rms_adamw"``) for the same hidden matrices as ours, with AdamW for the
rest (it only takes 2-D parameters); our ``Muon`` with the automatic partition and several
orthogonalizers.

    python benchmarks/hf_step.py [--rounds 5] [--steps 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def _model(seed: int = 0) -> tuple[torch.nn.Module, str]:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    try:
        from muonft.models.hf import load_hf

        model, _ = load_hf("minilm", "seq-cls", num_labels=2)
        return model, "all-MiniLM-L6-v2 weights"
    except Exception:  # not cached: the same architecture, random weights
        cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                         num_attention_heads=12, intermediate_size=1536, num_labels=2)
        return BertForSequenceClassification(cfg), "random init (minilm not cached)"


def _optimizers(model: torch.nn.Module) -> dict[str, list[torch.optim.Optimizer]]:
    """Name → the optimizer(s) that together step every parameter once."""
    from muonft.optim import Muon, muon_param_groups, partition_parameters

    opts: dict[str, list[torch.optim.Optimizer]] = {
        "adamw": [torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                    foreach=True)]}
    for name, kw in (("muon polar_express", {}), ("muon ns5", {"orthogonalizer": "ns5"}),
                     ("muon ns5 3 steps", {"orthogonalizer": "ns5", "ns_steps": 3}),
                     ("muon auto", {"orthogonalizer": "auto"})):
        opts[name] = [Muon(muon_param_groups(model), lr=1e-4, **kw)]
    group = {r.name: r.group for r in partition_parameters(model).rows}
    muon_p = [p for n, p in model.named_parameters() if group.get(n) == "muon"]
    rest = [p for n, p in model.named_parameters() if group.get(n) != "muon"]
    if hasattr(torch.optim, "Muon"):  # it takes 2-D parameters only: AdamW for the rest
        opts["torch.optim.Muon + AdamW"] = [
            torch.optim.Muon(muon_p, lr=1e-4, adjust_lr_fn="match_rms_adamw"),
            torch.optim.AdamW(rest, lr=1e-4, betas=(0.9, 0.95), foreach=True)]
    return opts


def _batch(step: int, batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return (torch.randint(1000, 30000, (batch, seq), generator=g),
            torch.randint(0, 2, (batch,), generator=g))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per optimizer per round")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, what = _model()
    model.train()
    opts = _optimizers(model)
    print(f"MiniLM-sized BERT classifier ({what}), batch {args.batch} x seq {args.seq}, "
          f"{args.threads} thread(s), torch {torch.__version__}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, load "
          f"{os.getloadavg()[0]:.2f}")

    def step(optimizers: list[torch.optim.Optimizer], i: int) -> float:
        x, y = _batch(i, args.batch, args.seq)
        t0 = time.perf_counter()
        loss = model(input_ids=x, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    names = list(opts)
    for n in names:  # warm-up: first steps allocate state (and auto decides)
        for i in range(2):
            step(opts[n], i)
    ratios: dict[str, list[float]] = {n: [] for n in names if n != "adamw"}
    medians: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        times: dict[str, list[float]] = {n: [] for n in names}
        for i in range(args.steps):
            for n in order:
                times[n].append(step(opts[n], 100 * r + i))
        for n in names:
            medians[n].append(statistics.median(times[n]))
        for n in ratios:
            ratios[n].append(medians[n][-1] / medians["adamw"][-1])
    print(f"{'optimizer':28s} {'step ms (median of rounds)':>27s} {'vs AdamW':>9s} "
          f"{'range':>13s}")
    for n in names:
        ms = 1000 * statistics.median(medians[n])
        if n == "adamw":
            print(f"{n:28s} {ms:27.0f} {'1.00x':>9s}")
        else:
            rs = ratios[n]
            print(f"{n:28s} {ms:27.0f} {statistics.median(rs):8.2f}x "
                  f"{min(rs):6.2f}-{max(rs):.2f}x")


if __name__ == "__main__":
    main()
