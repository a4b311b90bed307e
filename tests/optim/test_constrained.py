"""Constrained Muon: low-rank updates (``update_rank``), drift budget (``max_drift``), and the
joint LoRA rule (``lora_muon="joint"``)."""

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from muonft.optim import Muon, muon_param_groups, update_scale
from muonft.optim.constrained import factored_spectral_norm, joint_lora_directions


def _grads(shapes, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def _params(shapes, seed=123, dtype=torch.float32):
    return [w.requires_grad_() for w in _grads(shapes, seed, dtype)]


def _step(opt, params, seed):
    for p, g in zip(params, _grads([tuple(p.shape) for p in params], seed, params[0].dtype)):
        p.grad = g
    opt.step()


SHAPES = [(12, 20), (20, 12), (12, 12), (6, 2, 3, 3), (12, 20)]


# --- update_rank -------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [0, 5])
def test_full_update_rank_equals_plain_muon_bit_for_bit(extra):
    a, b = _params(SHAPES), _params(SHAPES)
    plain = Muon(a, lr=0.02, weight_decay=0.1)
    full = Muon(b, lr=0.02, weight_decay=0.1, update_rank=12 + extra)  # ≥ min(m, n) everywhere
    for t in range(4):
        _step(plain, a, t)
        _step(full, b, t)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert full.constraint_stats()["low_rank_matrices"] == 0


@pytest.mark.parametrize("style", ["ema", "sum"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_rank_one_steps_move_each_matrix_by_rank_one(style, nesterov):
    shapes = [(16, 24), (24, 16), (16, 24), (8, 3, 2, 2)]
    ps = _params(shapes, dtype=torch.float64)
    lr, wd = 0.05, 0.1
    opt = Muon(ps, lr=lr, weight_decay=wd, update_rank=1, momentum_style=style,
               nesterov=nesterov)
    for t in range(6):
        before = [p.detach().clone() for p in ps]
        _step(opt, ps, t)
        for p, w in zip(ps, before):
            delta = (p.detach() - w * (1 - lr * wd)).reshape(p.shape[0], -1)  # without decay
            s = torch.linalg.svdvals(delta)
            assert s[1] / s[0] < 1e-10
            # one unit singular value, scaled as plain Muon scales the shape
            expect = lr * update_scale("match_adamw_rms", tuple(delta.shape))
            assert s[0].item() == pytest.approx(expect, rel=1e-9)
    assert opt.constraint_stats()["low_rank_matrices"] == len(ps)


def test_rank_r_steps_have_rank_r_and_track_the_top_directions():
    torch.manual_seed(0)
    m, n, r = 32, 48, 4
    U, _ = torch.linalg.qr(torch.randn(m, m, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, m, dtype=torch.float64))
    sig = torch.cat([torch.full((r,), 10.0), torch.full((m - r,), 0.1)]).double()
    G = (U * sig) @ V.T  # a dominant rank-r part
    W = torch.zeros(m, n, dtype=torch.float64, requires_grad=True)
    opt = Muon([W], lr=1.0, momentum=0.0, nesterov=False, update_rank=r, scale="none")
    for _ in range(3):
        before = W.detach().clone()
        W.grad = G.clone()
        opt.step()
    delta = before - W.detach()
    s = torch.linalg.svdvals(delta)
    assert s[r] < 1e-10 * s[0]
    torch.testing.assert_close(s[:r], torch.ones(r, dtype=torch.float64))
    # the applied direction is the polar factor of the dominant part
    torch.testing.assert_close(delta, U[:, :r] @ V[:, :r].T, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["constant", "random"])
def test_error_feedback_keeps_discarded_mass_bounded(kind):
    # E_t = (1 − μ)·(Σ g − Σ applied part): the gradient mass not yet applied. With r = 1 of 8
    # directions, a constant gradient's cumulative mass grows like t·‖G‖ while E plateaus.
    m, n, mu, steps = 8, 12, 0.9, 1600
    W = torch.zeros(m, n, dtype=torch.float64, requires_grad=True)
    opt = Muon([W], lr=1e-3, momentum=mu, update_rank=1)
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(m, n, generator=gen, dtype=torch.float64)
    norms = []
    for _ in range(steps):
        W.grad = G.clone() if kind == "constant" else torch.randn(m, n, generator=gen,
                                                                   dtype=torch.float64)
        opt.step()
        norms.append(opt.state[W]["momentum_buffer"].norm().item())
    half, late = max(norms[: steps // 2]), max(norms[steps // 2:])
    assert late < 1.1 * half  # plateaued
    # diagonal model of the round robin: each of the min(m, n) directions holds ≤ Σσ(G)
    bound = math.sqrt(m) * torch.linalg.svdvals(G).sum().item()
    assert max(norms) < 2 * bound
    if kind == "constant":
        assert norms[-1] / (1 - mu) < 0.1 * steps * G.norm().item()


def test_low_rank_batched_equals_alone():
    shapes = [(16, 24), (24, 16), (16, 24)]
    ps = _params(shapes, dtype=torch.float64)
    alone = [p.detach().clone().requires_grad_() for p in ps]
    together = Muon(ps, lr=0.02, update_rank=3)
    singles = [Muon([p], lr=0.02, update_rank=3, nesterov=True) for p in alone]
    for t in range(4):
        gs = _grads(shapes, t, torch.float64)
        for p, q, g in zip(ps, alone, gs):
            p.grad, q.grad = g.clone(), g.clone()
        together.step()
        for o in singles:
            o.step()
    # seeds differ with the position in the group: compare the first matrix only exactly,
    # the others by rank and norm
    torch.testing.assert_close(ps[0], alone[0], atol=1e-10, rtol=0)


def test_low_rank_with_bf16_params_runs_and_keeps_fp32_basis():
    p = torch.randn(32, 64, dtype=torch.bfloat16, requires_grad=True)
    opt = Muon([p], lr=0.02, update_rank=4)
    p.grad = torch.randn(32, 64, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[p]["lowrank_basis"].dtype == torch.float32
    assert opt.state[p]["lowrank_basis"].shape == (64, 4)
    assert torch.isfinite(p).all()


# --- max_drift ---------------------------------------------------------------------------------

def test_drift_budget_is_never_exceeded_and_binds_are_counted():
    ps = _params(SHAPES)
    w0 = [p.detach().clone() for p in ps]
    rho = 0.05
    opt = Muon(ps, lr=0.05, max_drift=rho, update_rank=None)
    for t in range(30):
        _step(opt, ps, t)
        for p, w in zip(ps, w0):
            assert (p.detach() - w).norm() <= rho * w.norm() * (1 + 1e-5)
    stats = opt.constraint_stats()
    assert stats["drift_checks"] == 30 * len(ps)
    assert 0 < stats["drift_binds"] <= stats["drift_checks"]
    assert stats["drift_max"] == pytest.approx(rho, rel=1e-4)
    assert 0 < stats["drift_bind_rate"] <= 1


@pytest.mark.parametrize("rho", [math.inf, None, 1e9])
def test_infinite_or_slack_drift_budget_equals_plain_muon_bit_for_bit(rho):
    a, b = _params(SHAPES), _params(SHAPES)
    plain = Muon(a, lr=0.02, weight_decay=0.1)
    budget = Muon(b, lr=0.02, weight_decay=0.1, max_drift=rho)
    for t in range(5):
        _step(plain, a, t)
        _step(budget, b, t)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert budget.constraint_stats()["drift_binds"] == 0


def test_drift_budget_combines_with_low_rank_and_skips_adamw_groups():
    m = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 16))
    w0 = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = Muon(muon_param_groups(m), lr=0.1, adamw_lr=0.5, max_drift=0.01, update_rank=2)
    for t in range(10):
        torch.manual_seed(t)
        m(torch.randn(4, 16)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    for n, p in m.named_parameters():
        drift = ((p.detach() - w0[n]).norm() / w0[n].norm()).item()
        if p.ndim == 2:
            assert drift <= 0.01 * (1 + 1e-5)
        else:  # biases train with AdamW, unconstrained
            assert drift > 0.01


# --- lora_muon="joint" -------------------------------------------------------------------------

@pytest.mark.parametrize("m,n,r", [(48, 32, 4), (32, 64, 8), (40, 40, 1)])
@pytest.mark.parametrize("b_zero", [False, True])
@pytest.mark.parametrize("scale", ["match_adamw_rms", "spectral"])
def test_joint_rule_step_has_the_intended_spectral_norm(m, n, r, b_zero, scale):
    gen = torch.Generator().manual_seed(m + n + r)
    A0 = torch.randn(r, n, generator=gen, dtype=torch.float64) / math.sqrt(n)
    B0 = torch.zeros(m, r, dtype=torch.float64) if b_zero else 0.3 * torch.randn(
        m, r, generator=gen, dtype=torch.float64)
    G = torch.randn(m, n, generator=gen, dtype=torch.float64)
    A, B = A0.clone().requires_grad_(), B0.clone().requires_grad_()
    lr = 1e-4
    opt = Muon([A, B], lr=lr, momentum=0.0, nesterov=False, scale=scale, lora_muon="joint",
               lora_pairs=[(A, B)])
    A.grad, B.grad = B0.T @ G, G @ A0.T
    opt.step()
    dA, dB = A.detach() - A0, B.detach() - B0
    first_order = B0 @ dA + dB @ A0
    intended = lr * update_scale(scale, (m, n))
    assert torch.linalg.matrix_norm(first_order, ord=2).item() == pytest.approx(intended,
                                                                                  rel=1e-8)
    actual = B.detach() @ A.detach() - B0 @ A0
    assert torch.linalg.matrix_norm(actual, ord=2).item() == pytest.approx(intended, rel=1e-2)
    assert (first_order * G).sum() < 0  # a descent direction for the product
    assert torch.linalg.matrix_rank(first_order) <= (r if b_zero else 2 * r)


def test_joint_halves_are_orthogonal_and_norm_is_exact():
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(3, 4, 20, generator=gen, dtype=torch.float64)
    B = torch.randn(3, 30, 4, generator=gen, dtype=torch.float64)
    G = torch.randn(3, 30, 20, generator=gen, dtype=torch.float64)
    dA, dB = joint_lora_directions(A, B, B.mT @ G, G @ A.mT, damping=0.0)
    T = B @ dA + dB @ A
    torch.testing.assert_close(torch.linalg.matrix_norm(T, ord=2), torch.ones(3,
                               dtype=torch.float64))
    # each half alone is a partial isometry, up to the common normalization
    for half in (B @ dA, dB @ A):
        s = torch.linalg.svdvals(half)[:, :4]
        torch.testing.assert_close(s / s[:, :1], torch.ones_like(s))
    F, H = torch.randn(2, 30, 5, dtype=torch.float64), torch.randn(2, 20, 5, dtype=torch.float64)
    torch.testing.assert_close(factored_spectral_norm(F, H),
                               torch.linalg.matrix_norm(F @ H.mT, ord=2))


class _Attn(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.q, self.v = nn.Linear(d, d, bias=False), nn.Linear(d, 2 * d, bias=False)
        self.o = nn.Linear(2 * d, d, bias=False)

    def forward(self, x):
        return self.o(torch.tanh(self.v(x)) * self.q(x).repeat(1, 2))


def _lora_model():
    from muonft.adapters import LoRASpec, apply_lora

    torch.manual_seed(0)
    return apply_lora(_Attn(), LoRASpec(rank=2, targets=("q", "v")))


def _lora_train(model, opt, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=g)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def test_joint_rule_on_a_peft_model_uses_lora_pairs():
    from muonft.adapters import lora_pairs

    model = _lora_model()
    pairs = lora_pairs(model)
    assert len(pairs) == 2 and all(a.shape[0] == b.shape[1] == 2 for a, b in pairs)
    opt = Muon(muon_param_groups(model), lr=0.01, lora_muon="joint", lora_pairs=pairs)
    assert sum(len(g["lora_pairs"]) for g in opt.param_groups) == 2
    before = [(a.detach().clone(), b.detach().clone()) for a, b in pairs]
    _lora_train(model, opt, 3)
    for (a, b), (a0, b0) in zip(pairs, before):
        assert not torch.equal(b, b0)  # B moves from zero, A once B is non-zero
        assert not torch.equal(a, a0)
        assert torch.isfinite(a).all() and torch.isfinite(b).all()


# --- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"update_rank": 0}, "update_rank"), ({"update_rank": -2}, "update_rank"),
    ({"update_rank": 2.5}, "update_rank"), ({"update_rank": True}, "update_rank"),
    ({"max_drift": 0.0}, "max_drift"), ({"max_drift": -1}, "max_drift"),
    ({"max_drift": float("nan")}, "max_drift"), ({"max_drift": "0.1"}, "max_drift"),
    ({"lora_muon": "both"}, "lora_muon"), ({"lora_muon": "joint"}, "lora_pairs"),
])
def test_invalid_constraint_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon(_params([(4, 6)]), **kwargs)


def test_invalid_lora_pairs():
    A, B, C = (torch.randn(*s, requires_grad=True) for s in [(2, 8), (6, 2), (3, 8)])
    stray = torch.randn(6, 2, requires_grad=True)
    with pytest.raises(ValueError, match="same r"):
        Muon([A, B, C], lora_muon="joint", lora_pairs=[(C, B)])
    with pytest.raises(ValueError, match="same r"):
        Muon([A, B, C], lora_muon="joint", lora_pairs=[(B, A)])  # (B, A) order
    with pytest.raises(ValueError, match="not among"):
        Muon([A, B, C], lora_muon="joint", lora_pairs=[(A, stray)])
    with pytest.raises(ValueError, match="different param groups"):
        Muon([{"params": [A, C]}, {"params": [B]}], lora_muon="joint", lora_pairs=[(A, B)])
    with pytest.raises(ValueError, match="more than one pair"):
        Muon([A, B, stray], lora_muon="joint", lora_pairs=[(A, B), (A, stray)])
    with pytest.raises(ValueError, match="AdamW group"):
        Muon([{"params": [A, B], "use_muon": False}], lora_pairs=[(A, B)])
    with pytest.raises(ValueError, match="tensor pairs"):
        Muon([A, B], lora_muon="joint", lora_pairs=[A])


# --- state_dict --------------------------------------------------------------------------------

def _save_load_continue(make_model, make_opt, train):
    model = make_model()
    opt = make_opt(model)
    train(model, opt, 3, seed=1)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(model, opt, 4, seed=2)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    model2 = make_model()
    model2.load_state_dict(ck["model"])
    opt2 = make_opt(model2)
    opt2.load_state_dict(ck["opt"])
    train(model2, opt2, 4, seed=2)
    for x, y in zip(model.parameters(), model2.parameters()):
        assert torch.equal(x, y)
    return opt, opt2


def _mlp(dtype=torch.float32):
    def make():
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)).to(dtype)
    return make


def _mlp_train(model, opt, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(8, 16, generator=g).to(dtype)
        opt.zero_grad()
        model(x).float().square().mean().backward()
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", [{"update_rank": 2}, {"max_drift": 0.02},
                                     {"update_rank": 3, "max_drift": 0.05}])
def test_constrained_save_load_continue_is_bit_identical(options, dtype):
    opt, opt2 = _save_load_continue(
        _mlp(dtype), lambda m: Muon(muon_param_groups(m), lr=0.05, adamw_lr=1e-2,
                                    weight_decay=0.01, **options), _mlp_train)
    sd = opt2.state_dict()
    group = next(g for g in sd["param_groups"] if g["use_muon"])
    for k, v in options.items():
        assert group[k] == v
    for state in opt2.state.values():
        if "drift_binds" in state:
            assert state["drift_binds"].dtype == torch.int64
        if "lowrank_basis" in state:
            assert state["lowrank_basis"].dtype == torch.float32
    assert opt.constraint_stats() == opt2.constraint_stats()


def test_joint_lora_save_load_continue_is_bit_identical():
    from muonft.adapters import lora_pairs

    def make_opt(model):
        return Muon(muon_param_groups(model), lr=0.01, lora_muon="joint",
                    lora_pairs=lora_pairs(model), max_drift=0.5)

    opt, _ = _save_load_continue(_lora_model, make_opt, _lora_train)
    sd = opt.state_dict()
    assert any(g["lora_pairs"] for g in sd["param_groups"])
    assert all(isinstance(i, int) for g in sd["param_groups"] for pr in g["lora_pairs"]
               for i in pr)


@pytest.mark.parametrize("options", [{"update_rank": 1}, {"update_rank": 4},
                                     {"max_drift": 0.5}])
def test_constrained_options_still_fit_a_regression(options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 8))
    X = torch.randn(256, 16)
    Y = X @ torch.randn(16, 8) / 4
    opt = Muon(muon_param_groups(model), lr=0.02, adamw_lr=3e-3, **options)
    first = None
    for _ in range(150):
        loss = (model(X) - Y).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_joint_lora_reduces_the_loss():
    model = _lora_model()
    from muonft.adapters import lora_pairs

    opt = Muon(muon_param_groups(model), lr=0.02, lora_muon="joint",
               lora_pairs=lora_pairs(model))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    target = torch.randn(64, 16, generator=torch.Generator().manual_seed(1)) * 0.1
    losses = []
    for _ in range(60):
        loss = (model(x) - target).square().mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.8 * losses[0]


@settings(max_examples=15, deadline=None)
@given(m=st.integers(2, 24), n=st.integers(2, 24), r=st.integers(1, 6),
       nesterov=st.booleans(), seed=st.integers(0, 100))
def test_low_rank_step_is_a_rank_r_partial_isometry(m, n, r, nesterov, seed):
    W = torch.zeros(m, n, dtype=torch.float64, requires_grad=True)
    # r >= min(m, n) takes the plain path: make it exact too
    opt = Muon([W], lr=1.0, update_rank=r, scale="none", nesterov=nesterov,
               orthogonalizer="svd")
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        before = W.detach().clone()
        W.grad = torch.randn(m, n, generator=gen, dtype=torch.float64)
        opt.step()
    s = torch.linalg.svdvals(W.detach() - before)
    k = min(r, m, n)
    torch.testing.assert_close(s[:k], torch.ones(k, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (s[k:] < 1e-6).all()
