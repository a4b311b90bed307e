import math

import pytest
import torch

from muonft.adapters import LoRASpec, apply_lora, lora_factors
from muonft.optim import (
    LORA_BALANCED,
    SCALE_RULES,
    Muon,
    lora_balanced_scale,
    muon_param_groups,
    update_scale,
)


def _polar(M):
    U, _, Vh = torch.linalg.svd(M, full_matrices=False)
    return U @ Vh


def _rms(t):
    return float(t.square().mean().sqrt())


def test_rule_values_and_registration():
    assert LORA_BALANCED in SCALE_RULES
    assert update_scale("lora_balanced", (8, 128)) == pytest.approx(4.0)
    assert update_scale("lora_balanced", (128, 8)) == pytest.approx(4.0)
    for shape in ((64, 64), (512, 128), (128, 8)):  # equals `spectral` on square / tall
        assert lora_balanced_scale(*shape) == pytest.approx(update_scale("spectral", shape))
    with pytest.raises(ValueError, match=r"shape must be positive, got \(0, 4\)"):
        lora_balanced_scale(0, 4)


@pytest.mark.parametrize(("d_in", "d_out", "r"), [(128, 128, 8), (128, 512, 4), (96, 32, 2)])
def test_factor_updates_have_equal_rms(d_in, d_out, r):
    g = torch.Generator().manual_seed(0)
    OA = _polar(torch.randn(r, d_in, generator=g))   # A: r×in
    OB = _polar(torch.randn(d_out, r, generator=g))  # B: out×r
    bal = [_rms(update_scale("lora_balanced", tuple(O.shape)) * O) for O in (OA, OB)]
    assert bal[0] == pytest.approx(bal[1], rel=1e-5)
    assert bal[0] == pytest.approx(1 / math.sqrt(r), rel=1e-5)
    spec = [_rms(update_scale("spectral", tuple(O.shape)) * O) for O in (OA, OB)]
    assert spec[1] / spec[0] == pytest.approx(math.sqrt(d_in / r), rel=1e-5)


def test_muon_step_with_lora_balanced_moves_a_and_b_equally(tiny, tokens):
    m = apply_lora(tiny(), LoRASpec(rank=4))
    with torch.no_grad():
        for _, _, B, _ in lora_factors(m):
            B.normal_(std=0.1)  # with B = 0 the gradient of A vanishes
    opt = Muon(muon_param_groups(m), lr=0.01, scale="lora_balanced", orthogonalizer="svd")
    before = {n: (A.detach().clone(), B.detach().clone()) for n, A, B, _ in lora_factors(m)}
    m(tokens).square().mean().backward()
    opt.step()
    for n, A, B, _ in lora_factors(m):
        da, db = _rms(A.detach() - before[n][0]), _rms(B.detach() - before[n][1])
        assert da == pytest.approx(db, rel=0.02) and da == pytest.approx(0.01 / 2, rel=0.02)
