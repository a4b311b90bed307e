import math

import pytest
import torch

from muonft.adapters import LoRASpec, apply_lora, lora_factors
from muonft.diagnostics import UpdateRMSTracker, lora_diagnostics, spectral_metrics
from muonft.models import GPTConfig, build_gpt
from muonft.optim import Muon, muon_param_groups

CFG = GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=16)


def _lora_gpt(variant="lora"):
    torch.manual_seed(0)
    m = apply_lora(build_gpt(CFG), LoRASpec(rank=4, alpha=8, variant=variant))
    with torch.no_grad():
        for _, _, B, _ in lora_factors(m):
            B.normal_()
    return m


def test_lora_diagnostics_match_direct_computation():
    m = _lora_gpt()
    d = lora_diagnostics(m)
    assert set(d) == {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_in", "mlp_out", "overall"}
    fac = [(n, A, B, s) for n, A, B, s in lora_factors(m) if n.endswith("mlp.fc_in")]
    assert len(fac) == 2 and {s for *_, s in fac} == {2.0}
    for part, mats in (("A", [A for _, A, _, _ in fac]), ("B", [B for _, _, B, _ in fac]),
                       ("BA", [s * B @ A for _, A, B, s in fac])):
        ref = spectral_metrics(torch.stack([x.detach() for x in mats]))
        for k, v in ref.items():
            assert d["mlp_in"][part][k] == pytest.approx(float(v.mean()), rel=1e-4), (part, k)
    # BA has rank ≤ r = 4 out of min(128, 32) = 32 directions: entropy ≤ log 4 / log 32.
    assert d["overall"]["BA"]["spectral_entropy"] <= math.log(4) / math.log(32) + 1e-5
    assert d["overall"]["BA"]["stable_rank"] <= 4 + 1e-4


def test_lora_diagnostics_needs_adapters():
    with pytest.raises(ValueError, match="no LoRA adapter named 'default'"):
        lora_diagnostics(build_gpt(CFG))


def test_update_rms_of_sgd_step_is_lr_times_grad_rms():
    a, b = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))
    a.grad, b.grad = torch.ones(3, 4), torch.full((5,), 2.0)
    opt = torch.optim.SGD([a, b], lr=0.1)
    tr = UpdateRMSTracker({"x": [a], "y": [b]})
    tr.snapshot()
    opt.step()
    out = tr.measure(0)
    assert out["x"] == pytest.approx(0.1) and out["y"] == pytest.approx(0.2)
    pooled = UpdateRMSTracker({"all": [a, b]})
    pooled.snapshot()
    opt.step()
    assert pooled.measure()["all"] == pytest.approx(math.sqrt((12 * 0.01 + 5 * 0.04) / 17))
    with pytest.raises(RuntimeError, match="needs a snapshot"):
        pooled.measure()


def test_update_rms_muon_vs_adamw_groups():
    torch.manual_seed(0)
    model = build_gpt(CFG)
    opt = Muon(muon_param_groups(model), lr=0.02)
    tr = UpdateRMSTracker.from_optimizer(opt)
    assert set(tr.params) == {"muon", "adamw"}
    x = torch.randint(0, 64, (2, 16))
    for step in range(3):
        loss = model(x, x)[1]
        opt.zero_grad()
        loss.backward()
        tr.snapshot()
        opt.step()
        tr.measure(step)
    s = tr.summary()
    assert len(tr.history) == 3 and set(s) == {"muon", "adamw"}
    # match_adamw_rms: an orthogonalized, 0.2·√max(m,n)-scaled update has RMS ≈ 0.2·lr.
    assert 0.5 * 0.2 * 0.02 < s["muon"] < 1.5 * 0.2 * 0.02
    assert s["adamw"] > 0
