import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from muonft.optim import Muon, muon_param_groups, orthogonalize, update_scale
from muonft.optim.muon import momentum_update, orthogonalize_batched


def _grads(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) for s in shapes]


def _run(opt, params, shapes, steps, seed0=0):
    for t in range(steps):
        for p, g in zip(params, _grads(shapes, seed0 + t)):
            p.grad = g.clone()
        opt.step()


SHAPES = [(32, 64), (64, 32), (32, 32), (32, 64)]


def test_equals_torch_muon_step_for_step():
    W = _grads(SHAPES, 99)
    ours = [w.clone().requires_grad_() for w in W]
    ref = [w.clone().requires_grad_() for w in W]
    a = Muon(ours, lr=0.02, weight_decay=0.1, orthogonalizer="ns5", scale="match_adamw_rms")
    b = torch.optim.Muon(ref, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for t in range(6):
        for ps in (ours, ref):
            for p, g in zip(ps, _grads(SHAPES, t)):
                p.grad = g
        a.step()
        b.step()
        for x, y in zip(ours, ref):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_spectral_rule_equals_torch_original():
    W = _grads(SHAPES, 5)
    ours = [w.clone().requires_grad_() for w in W]
    ref = [w.clone().requires_grad_() for w in W]
    a = Muon(ours, lr=0.01, orthogonalizer="ns5", scale="spectral")
    b = torch.optim.Muon(ref, lr=0.01, weight_decay=0.0, adjust_lr_fn="original")
    _run(a, ours, SHAPES, 3)
    _run(b, ref, SHAPES, 3)
    for x, y in zip(ours, ref):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_batched_equals_per_parameter():
    dirs = _grads([(16, 48), (48, 16), (16, 48), (8, 3, 3, 3), (16, 16)], 1)
    batched = orthogonalize_batched(dirs, "polar_express", 5, torch.float32, stack=True)
    looped = orthogonalize_batched(dirs, "polar_express", 5, torch.float32, stack=False)
    for d, u, v in zip(dirs, batched, looped):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-5)
        M = d.reshape(d.shape[0], -1)
        single = orthogonalize(M, "polar_express", dtype=torch.float32).reshape(d.shape)
        torch.testing.assert_close(u, single, rtol=0, atol=1e-5)


_SHAPE = st.sampled_from([(6, 10), (10, 6), (6, 6), (3, 2, 2, 2), (6, 2, 5), (1, 7)])


@settings(max_examples=12, deadline=None)
@given(shapes=st.lists(_SHAPE, min_size=1, max_size=6),
       method=st.sampled_from(["ns5", "polar_express", "exact_thin"]))
def test_batched_equals_per_parameter_property(shapes, method):
    dirs = _grads(shapes, len(shapes))
    batched = orthogonalize_batched(dirs, method, 5, torch.float64, stack=True)
    looped = orthogonalize_batched(dirs, method, 5, torch.float64, stack=False)
    for d, u, v in zip(dirs, batched, looped):
        assert u.shape == d.shape
        torch.testing.assert_close(u, v, rtol=0, atol=1e-5)


def test_conv_weights_are_flattened_not_mixed():
    conv = torch.randn(8, 3, 3, 3)
    other = torch.randn(8, 27)  # same flattened shape: batched together, still independent
    u_conv, u_other = orthogonalize_batched([conv, other], "svd", 1, None, stack=True)
    assert u_conv.shape == conv.shape
    ref = orthogonalize(conv.reshape(8, 27).double(), "svd").float().reshape(conv.shape)
    torch.testing.assert_close(u_conv, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(u_other, orthogonalize(other.double(), "svd").float(), atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("style", ["ema", "sum"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_momentum_formulas(style, nesterov):
    mu = 0.9
    g1, g2 = torch.randn(4, 4), torch.randn(4, 4)
    buf = [torch.zeros(4, 4)]
    momentum_update(buf, [g1], mu, style, nesterov)
    d = momentum_update(buf, [g2], mu, style, nesterov)[0]
    if style == "ema":
        b = mu * (1 - mu) * g1 + (1 - mu) * g2
        expect = g2 + mu * (b - g2) if nesterov else b
    else:
        b = mu * g1 + g2
        expect = g2 + mu * b if nesterov else b
    torch.testing.assert_close(buf[0], b)
    torch.testing.assert_close(d, expect)


def test_bf16_no_nesterov_buffer_not_corrupted():
    # torch.optim.Muon normalises the bf16 buffer in place when nesterov=False.
    p = torch.randn(16, 32, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(16, 32, dtype=torch.bfloat16)
    opt = Muon([p], lr=0.01, nesterov=False, momentum=0.5, orthogonalizer="ns5")
    p.grad = g.clone()
    opt.step()
    buf = opt.state[p]["momentum_buffer"]
    torch.testing.assert_close(buf, (0.5 * g.float()).bfloat16())


def test_update_rms_and_scale_rules():
    assert update_scale("spectral", (64, 16)) == 2.0
    assert update_scale("spectral", (16, 64)) == 1.0
    assert math.isclose(update_scale("match_adamw_rms", (16, 64)), 0.2 * 8)
    # with match_adamw_rms, an exactly orthogonal update has RMS 0.2·lr
    p = torch.zeros(64, 256, requires_grad=True)
    opt = Muon([p], lr=1.0, orthogonalizer="svd", momentum=0.0)
    p.grad = torch.randn(64, 256)
    opt.step()
    assert abs(p.detach().pow(2).mean().sqrt().item() - 0.2) < 1e-4


def test_weight_decay_is_decoupled_and_skipped_without_grad():
    a = torch.ones(8, 8, requires_grad=True)
    b = torch.ones(8, 8, requires_grad=True)
    opt = Muon([a, b], lr=0.1, weight_decay=0.5)
    a.grad = torch.zeros(8, 8)  # zero gradient: only decay acts
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((8, 8), 0.95))
    assert torch.equal(b.detach(), torch.ones(8, 8))  # no grad: untouched, not even decayed
    assert b not in opt.state


def _model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Embedding(20, 16), nn.Linear(16, 32), nn.ReLU(), nn.LayerNorm(32),
                         nn.Linear(32, 16), nn.Linear(16, 20))


def _train(model, opt, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 20, (8, 5), generator=g)
        loss = model(x).logsumexp(-1).mean() - model(x)[..., 0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_adamw_groups_match_torch_adamw():
    m1, m2 = _model(), _model()
    groups = [{"params": list(m1.parameters()), "use_muon": False}]
    ours = Muon(groups, lr=1e-2, weight_decay=0.1, adamw_betas=(0.9, 0.95), adamw_eps=1e-8)
    ref = torch.optim.AdamW(m2.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95),
                            eps=1e-8, foreach=True)
    _train(m1, ours, 5)
    _train(m2, ref, 5)
    for x, y in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(x, y)


@pytest.mark.parametrize("orth", ["polar_express", "auto"])
def test_save_load_continue_is_bit_identical(orth):
    m = _model()
    opt = Muon(muon_param_groups(m), lr=0.02, adamw_lr=3e-3, weight_decay=0.01, orthogonalizer=orth)
    _train(m, opt, 3, seed=1)
    buf = io.BytesIO()
    torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, buf)
    _train(m, opt, 4, seed=2)

    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    m2 = _model()
    m2.load_state_dict(ck["model"])
    opt2 = Muon(muon_param_groups(m2), lr=0.02, adamw_lr=3e-3, weight_decay=0.01,
                orthogonalizer=orth)
    opt2.load_state_dict(ck["opt"])
    _train(m2, opt2, 4, seed=2)
    for x, y in zip(m.parameters(), m2.parameters()):
        assert torch.equal(x, y)


def test_adamw_lr_defaults_to_lr_and_can_differ():
    m = _model()
    opt = Muon(muon_param_groups(m), lr=0.02)
    assert {g["lr"] for g in opt.param_groups} == {0.02}
    opt = Muon(muon_param_groups(m), lr=0.02, adamw_lr=1e-3)
    lrs = {g["use_muon"]: g["lr"] for g in opt.param_groups}
    assert lrs == {True: 0.02, False: 1e-3}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -0.1}, "lr must be a finite number >= 0, got -0.1"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"momentum": -0.1}, r"momentum must be in \[0, 1\), got -0.1"),
        ({"scale": "huge"}, "unknown scale rule 'huge'"),
        ({"orthogonalizer": "qr"}, "unknown orthogonalizer 'qr'"),
        ({"momentum_style": "heavy"}, "momentum_style must be one of"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0, got -1.0"),
    ],
)
def test_invalid_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon([torch.zeros(4, 4, requires_grad=True)], **kwargs)


def test_invalid_parameters():
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        Muon([torch.zeros(4, requires_grad=True)])
    with pytest.raises(ValueError, match="complex"):
        Muon([torch.zeros(4, 4, dtype=torch.complex64, requires_grad=True)])
    with pytest.raises(ValueError, match="sparse parameters"):
        Muon([torch.eye(4).to_sparse().requires_grad_()])
    with pytest.raises(ValueError, match=r"ns_dtype must be a floating torch dtype.*'bf16'"):
        Muon([torch.zeros(4, 4, requires_grad=True)], ns_dtype="bf16")
    with pytest.raises(ValueError, match=r"ns_dtype.*torch\.int8"):
        Muon([torch.zeros(4, 4, requires_grad=True)], ns_dtype=torch.int8)
    p = torch.zeros(4, 4, requires_grad=True)
    opt = Muon([p])
    p.grad = torch.eye(4).to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()


def test_loss_goes_down_on_a_small_model():
    m = _model()
    opt = Muon(muon_param_groups(m), lr=0.02, adamw_lr=3e-3)
    x = torch.randint(0, 20, (16, 5), generator=torch.Generator().manual_seed(0))
    y = (x + 1) % 20
    losses = []
    for _ in range(40):
        loss = nn.functional.cross_entropy(m(x).reshape(-1, 20), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_deepcopy_and_state_dict_keep_rule_names():
    p = torch.zeros(4, 4, requires_grad=True)
    opt = Muon([p], scale="spectral", orthogonalizer="ns5")
    sd = copy.deepcopy(opt.state_dict())
    assert sd["param_groups"][0]["scale"] == "spectral"
    assert sd["param_groups"][0]["orthogonalizer"] == "ns5"


def test_auto_choices_are_exposed_and_no_less_orthogonal_than_ns5():
    ps = [torch.zeros(16, 48, requires_grad=True), torch.zeros(8, 64, requires_grad=True)]
    opt = Muon(ps, orthogonalizer="auto")
    assert opt.auto_choices == {}
    for p, g in zip(ps, _grads([(16, 48), (8, 64)], 4)):
        p.grad = g
    opt.step()
    choices = opt.auto_choices
    assert len(choices) == 2
    for c in choices.values():
        assert c["error"] <= c["ns5_error"] + 1e-6


@pytest.mark.parametrize("orthogonalizer", ["exact", "exact_thin"])
def test_exact_step_does_not_depend_on_the_gradient_scale(orthogonalizer):
    # Regression: at gradient scale 1e20 eigh raised mid-step; at 1e-30 the update was zero.
    G = _grads([(8, 48), (48, 8)], 4)
    moved = {}
    for scale in (1e-30, 1.0, 1e20):
        ps = [torch.zeros_like(g, requires_grad=True) for g in G]
        opt = Muon(ps, lr=0.1, orthogonalizer=orthogonalizer)
        for p, g in zip(ps, G):
            p.grad = g * scale
        opt.step()
        moved[scale] = [p.detach().clone() for p in ps]
    for scale in (1e-30, 1e20):
        for a, b in zip(moved[scale], moved[1.0]):
            assert b.abs().max() > 0.01
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
