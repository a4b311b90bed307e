import math
import time

import pytest
import torch

from muonft.diagnostics import layer_group, spectral_metrics, weight_diagnostics
from muonft.models import build_gpt


def test_identity_rank1_diagonal():
    m = spectral_metrics(torch.eye(8))
    assert m["stable_rank"] == pytest.approx(8)
    assert m["spectral_entropy"] == pytest.approx(1.0)
    assert m["spectral_norm"] == pytest.approx(1.0)
    assert m["max_norm"] == pytest.approx(1.0)
    u, v = torch.randn(6, 1), torch.randn(1, 9)
    r1 = spectral_metrics(u @ v)
    assert r1["stable_rank"] == pytest.approx(1.0, abs=1e-5)
    assert r1["spectral_entropy"] == pytest.approx(0.0, abs=1e-4)
    assert r1["spectral_norm"] == pytest.approx(float(u.norm() * v.norm()), rel=1e-5)
    d = spectral_metrics(torch.diag(torch.tensor([3.0, -2.0, 1.0])))
    p = torch.tensor([9.0, 4.0, 1.0]) / 14
    assert d["stable_rank"] == pytest.approx(14 / 9)
    assert d["spectral_entropy"] == pytest.approx(float(-(p * p.log()).sum() / math.log(3)))
    assert d["spectral_norm"] == pytest.approx(3.0) and d["max_norm"] == pytest.approx(3.0)
    z = spectral_metrics(torch.zeros(4, 5))
    assert z["stable_rank"] == 0 and z["spectral_entropy"] == 0


def test_batched_equals_single():
    W = torch.randn(5, 12, 7)
    batched = spectral_metrics(W)
    for i in range(5):
        single = spectral_metrics(W[i])
        for k in batched:
            assert batched[k][i] == pytest.approx(float(single[k]), rel=1e-5)


@pytest.mark.parametrize(("name", "group"), [
    ("blocks.3.attn.q.weight", "attn_q"), ("blocks.0.attn.o.weight", "attn_o"),
    ("blocks.1.mlp.fc_in.weight", "mlp_in"), ("blocks.1.mlp.fc_out.weight", "mlp_out"),
    ("embed.weight", "embedding"), ("head.weight", "head"),
    ("base_model.model.blocks.0.attn.v.lora_A.default.weight", "attn_v"),
    ("base_model.model.blocks.0.attn.k.base_layer.weight", "attn_k"),
    ("bert.encoder.layer.0.attention.self.query.weight", "attn_q"),
    ("bert.encoder.layer.0.attention.output.dense.weight", "attn_o"),
    ("bert.encoder.layer.0.intermediate.dense.weight", "mlp_in"),
    ("bert.encoder.layer.0.output.dense.weight", "mlp_out"),
    ("bert.embeddings.word_embeddings.weight", "embedding"), ("classifier.weight", "head"),
    ("model.layers.0.self_attn.k_proj.weight", "attn_k"),
    ("model.layers.0.mlp.gate_proj.weight", "mlp_in"),
    ("model.layers.0.mlp.down_proj.weight", "mlp_out"),
    ("model.embed_tokens.weight", "embedding"), ("lm_head.weight", "head"),
    ("transformer.h.0.attn.c_attn.weight", "attn_qkv"),
    ("transformer.h.0.mlp.c_fc.weight", "mlp_in"), ("transformer.h.0.mlp.c_proj.weight", "mlp_out"),
    ("vision_model.encoder.layers.0.self_attn.out_proj.weight", "attn_o"),
    ("vision_model.encoder.layers.0.mlp.fc1.weight", "mlp_in"),
    ("encoder.block.0.layer.1.DenseReluDense.wi.weight", "mlp_in"),
    ("encoder.block.0.layer.1.DenseReluDense.wo.weight", "mlp_out"),
    ("something.else.weight", "other"),
])
def test_layer_group(name, group):
    assert layer_group(name) == group


def test_weight_diagnostics_drift_and_speed():
    torch.manual_seed(0)
    model = build_gpt("tiny")
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    d0 = weight_diagnostics(dict(model.named_parameters()), init)
    for row in d0.values():
        assert row["l2_drift"] == 0 and row["cosine_to_init"] == pytest.approx(1.0)
    assert {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_in", "mlp_out", "embedding", "head",
            "overall"} <= set(d0)
    drifts = []
    for scale in (0.01, 0.1):
        now = {n: p + scale * torch.randn_like(p) * p.std() for n, p in init.items()}
        drifts.append(weight_diagnostics(now, init)["overall"]["l2_drift"])
    assert drifts[0] < drifts[1]
    t0 = time.perf_counter()
    weight_diagnostics(dict(model.named_parameters()), init)
    assert time.perf_counter() - t0 < 5.0  # budget is 1 s; slack for a loaded CI machine
    upd = weight_diagnostics(now, init, update=True)
    assert upd["attn_q"]["stable_rank"] > 1
