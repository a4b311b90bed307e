import copy

import pytest
import torch
import torch.nn.functional as F

from muonft.adapters import LoRASpec, apply_lora, lora_factors, trainable_parameter_names


def _batches():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 50, (4, 6), generator=g) for _ in range(3)]


def _loss(model, x):
    logits = model(x[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


def grad_fn(model):
    """Average gradient over a few batches, as the caller's closure would compute it."""
    bs = _batches()
    for x in bs:
        (_loss(model, x) / len(bs)).backward()


def _reference_grads(model):
    ref = copy.deepcopy(model)
    grad_fn(ref)
    return {n: m.weight.grad.clone() for n, m in ref.named_modules()
            if isinstance(m, torch.nn.Linear) and n != "head"}


def test_factors_are_scaled_top_r_svd_of_negative_gradient(tiny):
    m = tiny()
    grads = _reference_grads(m)
    W0 = {n: mod.weight.detach().clone() for n, mod in m.named_modules() if n in grads}
    r, gamma = 3, 16.0
    apply_lora(m, LoRASpec(rank=r, alpha=6, variant="lora_one", gamma=gamma), grad_fn=grad_fn)
    fac = lora_factors(m)
    assert {n for n, *_ in fac} == set(grads)
    for n, A, B, s in fac:
        assert s == pytest.approx(6 / 3**0.5)  # rsLoRA scaling α/√r
        U, S, Vh = torch.linalg.svd(-grads[n], full_matrices=False)
        c = (S[0] * gamma) ** 0.5
        exp_B, exp_A = U[:, :r] * S[:r].sqrt() / c, S[:r].sqrt()[:, None] * Vh[:r] / c
        sign = torch.sign((B * exp_B).sum(0))  # singular vectors are defined up to sign
        torch.testing.assert_close(B.detach(), exp_B * sign, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(A.detach(), exp_A * sign[:, None], rtol=1e-4, atol=1e-6)
        # B₀A₀ = [−∇W]_r / (σ₁γ): spectral norm 1/γ.
        norm = float(torch.linalg.matrix_norm((B @ A).detach(), 2))
        assert norm == pytest.approx(1 / gamma, rel=1e-4)
        base = m.get_submodule(n).base_layer.weight
        torch.testing.assert_close(base, W0[n], rtol=0, atol=0)  # the study keeps W₀
    assert all(p.grad is None for p in m.parameters())
    assert all(".lora_" in n for n in trainable_parameter_names(m))


def test_default_init_is_a_descent_step_and_preserve_output_is_not(tiny):
    bs = _batches()
    plain = tiny()
    with torch.no_grad():
        before = sum(float(_loss(plain, x)) for x in bs)
        out0 = plain(bs[0])
    stepped = apply_lora(tiny(), LoRASpec(rank=4, alpha=8, variant="lora_one", gamma=8),
                         grad_fn=grad_fn)
    with torch.no_grad():
        after = sum(float(_loss(stepped, x)) for x in bs)
    assert after < before  # W₀ + s·B₀A₀ moves along the top-r negative gradient
    kept = apply_lora(tiny(), LoRASpec(rank=4, alpha=8, variant="lora_one", gamma=8,
                                       preserve_output=True), grad_fn=grad_fn)
    with torch.no_grad():
        torch.testing.assert_close(kept(bs[0]), out0, rtol=1e-4, atol=1e-5)
    layer = kept.blocks[0].attn.q
    recon = layer.base_layer.weight + layer.scaling["default"] * (
        layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
    torch.testing.assert_close(recon, plain.blocks[0].attn.q.weight, rtol=1e-5, atol=1e-6)


def test_missing_gradient_is_a_clear_error(tiny):
    def only_first_block(model):
        model.blocks[0].attn.q(torch.randn(2, 16)).sum().backward()

    m = tiny()
    with pytest.raises(ValueError, match=r"no gradient for blocks\.0\.attn\.k"):
        apply_lora(m, LoRASpec(rank=2, variant="lora_one"), grad_fn=only_first_block)
    assert all(p.requires_grad for p in m.parameters())  # flags restored after the failure
