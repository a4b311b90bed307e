"""Muon against the torch.optim.Optimizer contract.

The cases follow PyTorch's own optimizer suite for ``torch.optim.Muon`` (test/test_optim.py with
the Muon inputs of torch/testing/_internal/common_optimizers.py), written for our optimizer:
state_dict round trips, deepcopy / pickle / torch.save, add_param_group, zero_grad, closures,
per-group hyper-parameters, hooks, schedulers and torch's error types for torch's error cases.
Deliberate differences are in the Muon docstring and docs/CONTRACTS.md.
"""

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

from muonft.optim import Muon

SHAPES = [(6, 10), (10, 6), (8, 8)]


def _model(seed: int = 0) -> list[torch.Tensor]:
    """Three matrices (Muon) and one bias vector (AdamW), as leaf tensors."""
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(*s, generator=g).requires_grad_() for s in SHAPES]
    return [*ps, torch.randn(6, generator=g).requires_grad_()]


def _groups(ps, **muon_kwargs):
    return [{"params": ps[:3], **muon_kwargs}, {"params": ps[3:], "use_muon": False}]


def _set_grads(ps, step: int) -> None:
    g = torch.Generator().manual_seed(1000 + step)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)


def _steps(opt, ps, start: int, n: int) -> None:
    for t in range(start, start + n):
        _set_grads(ps, t)
        opt.step()


def _assert_same(xs, ys) -> None:
    for x, y in zip(xs, ys):
        assert torch.equal(x, y)


def _make(ps, **kwargs):
    return Muon(_groups(ps), lr=0.02, weight_decay=0.1, adamw_lr=1e-3, **kwargs)


# --- persistence: state_dict, deepcopy, pickle, torch.save ----------------------------------

@pytest.mark.parametrize("orthogonalizer", ["ns5", "polar_express", "exact", "auto"])
def test_state_dict_round_trip_then_steps_equal(orthogonalizer):
    ps = _model()
    opt = _make(ps, orthogonalizer=orthogonalizer)
    _steps(opt, ps, 0, 3)
    clones = [p.detach().clone().requires_grad_() for p in ps]
    opt_c = _make(clones, orthogonalizer=orthogonalizer)
    sd = copy.deepcopy(opt.state_dict())
    sd_c = copy.deepcopy(opt.state_dict())
    opt_c.load_state_dict(sd_c)
    # loading did not modify the dict it was given (like torch, the loaded state may share
    # its tensors, so later steps do)
    torch.testing.assert_close(sd_c["state"], sd["state"], rtol=0, atol=0)
    assert sd_c["param_groups"] == sd["param_groups"]
    for t in range(3, 6):
        _steps(opt, ps, t, 1)
        _steps(opt_c, clones, t, 1)
        _assert_same(ps, clones)
    # equal but not identical parameters give the same state_dict
    torch.testing.assert_close(opt.state_dict()["state"], opt_c.state_dict()["state"],
                               rtol=0, atol=0)
    assert opt.state_dict()["param_groups"] == opt_c.state_dict()["param_groups"]


def _deepcopy(obj):
    return copy.deepcopy(obj)


def _pickle(obj):
    return pickle.loads(pickle.dumps(obj))


def _torch_save(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("copier", [_deepcopy, _pickle, _torch_save],
                         ids=["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("orthogonalizer", ["polar_express", "auto"])
def test_copied_optimizer_steps_bit_identically(copier, orthogonalizer):
    # Regression: the copy lost distributed/orthogonalized_here/_auto and step() raised.
    ps = _model()
    opt = _make(ps, orthogonalizer=orthogonalizer)
    _steps(opt, ps, 0, 2)
    ps_c, opt_c = copier((ps, opt))
    assert opt_c.auto_choices == opt.auto_choices
    assert opt_c.orthogonalized_here == opt.orthogonalized_here
    for t in range(2, 5):
        _steps(opt, ps, t, 1)
        _steps(opt_c, ps_c, t, 1)
        _assert_same(ps, ps_c)


def test_deepcopy_copies_all_public_attrs():
    ps = _model()
    opt = _make(ps, distributed=False)
    _steps(opt, ps, 0, 1)
    public = {k for k in vars(opt) if not k.startswith("_")}
    dup = copy.deepcopy(opt)
    assert {k for k in vars(dup) if not k.startswith("_")} == public
    assert dup.distributed is False


def test_old_pickle_without_muon_attributes_still_steps():
    # A state pickled by torch's bare Optimizer.__getstate__ (what earlier versions wrote).
    ps = _model()
    opt = _make(ps)
    _steps(opt, ps, 0, 1)
    bare = torch.optim.Optimizer.__getstate__(opt)
    revived = Muon.__new__(Muon)
    revived.__setstate__(copy.deepcopy(bare))
    _steps(revived, ps, 1, 1)  # no AttributeError
    assert revived.distributed is True and revived.orthogonalized_here > 0


def test_load_state_dict_with_number_step():
    ps = _model()
    opt = _make(ps)
    _steps(opt, ps, 0, 2)
    sd = copy.deepcopy(opt.state_dict())  # state_dict() shares the live per-param dicts
    for st in sd["state"].values():
        if "step" in st:
            st["step"] = st["step"].item()
    clones = [p.detach().clone().requires_grad_() for p in ps]
    opt_c = _make(clones)
    opt_c.load_state_dict(sd)
    _steps(opt, ps, 2, 1)
    _steps(opt_c, clones, 2, 1)
    _assert_same(ps, clones)


def test_named_parameters_state_dict_round_trip():
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.Linear(8, 4, bias=False))
    opt = Muon(model.named_parameters(), lr=0.02)
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["0.weight", "1.weight"]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    twin = copy.deepcopy(model)
    opt_c = Muon(twin.named_parameters(), lr=0.02)
    opt_c.load_state_dict(copy.deepcopy(opt.state_dict()))  # loading shares tensors
    for m in (model, twin):
        for p in m.parameters():
            p.grad = torch.full_like(p, 0.5)
    opt.step()
    opt_c.step()
    _assert_same(model.parameters(), twin.parameters())


# --- add_param_group, zero_grad, closure, groups -------------------------------------------

def test_add_param_group_fills_defaults_like_the_constructor():
    # Regression: KeyError 'use_muon' for a valid matrix, after the group was appended.
    ps = _model()
    opt = Muon([ps[0]], lr=0.03, momentum=0.9, orthogonalizer="ns5", adamw_lr=1e-3)
    opt.add_param_group({"params": [ps[1]]})
    ref = Muon([ps[1]], lr=0.03, momentum=0.9, orthogonalizer="ns5", adamw_lr=1e-3)
    assert opt.param_groups[1].keys() == ref.param_groups[0].keys()
    for key, value in ref.param_groups[0].items():
        if key != "params":
            assert opt.param_groups[1][key] == value, key
    opt.add_param_group({"params": [ps[3]], "use_muon": False})
    assert opt.param_groups[2]["lr"] == 1e-3  # adamw_lr, as the constructor gives AdamW groups
    _steps(opt, ps[:2] + ps[3:], 0, 1)


def test_add_param_group_steps_like_a_constructor_group():
    ps, qs = _model(), _model()
    opt = Muon([ps[0]], lr=0.02, orthogonalizer="ns5")
    opt.add_param_group({"params": ps[1:3], "lr": 0.05})
    ref = Muon([{"params": [qs[0]]}, {"params": qs[1:3], "lr": 0.05}], lr=0.02,
               orthogonalizer="ns5")
    _steps(opt, ps[:3], 0, 2)
    _steps(ref, qs[:3], 0, 2)
    _assert_same(ps[:3], qs[:3])


@pytest.mark.parametrize(("group", "error"), [
    ({"params": [torch.randn(5, requires_grad=True)]}, ValueError),  # vector in a Muon group
    ({"params": [torch.randn(3, 3, requires_grad=True)], "lr": -1.0}, ValueError),
    ({"params": [torch.randn(3, 3, requires_grad=True)], "orthogonalizer": "nope"}, ValueError),
    ({"params": {torch.randn(3, 3, requires_grad=True)}}, TypeError),  # a set: unordered
    ([torch.randn(3, 3, requires_grad=True)], TypeError),  # not a dict
])
def test_add_param_group_rejects_bad_group_and_leaves_optimizer_unchanged(group, error):
    ps = _model()
    opt = _make(ps)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(error):
        opt.add_param_group(group)
    assert len(opt.param_groups) == 2
    assert opt.state_dict()["param_groups"] == before["param_groups"]
    _steps(opt, ps, 0, 1)


def test_add_param_group_rejects_a_parameter_already_present():
    ps = _model()
    opt = _make(ps)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [ps[0]]})
    assert len(opt.param_groups) == 2


def test_zero_grad():
    ps = _model()
    opt = _make(ps)
    _set_grads(ps, 0)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in ps)
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


def test_step_is_noop_without_grads():
    ps = _model()
    opt = _make(ps)
    before = [p.detach().clone() for p in ps]
    opt.step()
    _assert_same(ps, before)
    assert len(opt.state) == 0


def test_step_is_noop_for_zero_grads():
    ps = _model()
    opt = Muon(_groups(ps), lr=0.02, weight_decay=0.0)
    before = [p.detach().clone() for p in ps]
    for p in ps:
        p.grad = torch.zeros_like(p)
    opt.step()
    _assert_same(ps, before)


def test_step_with_closure_returns_loss_and_descends():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    groups = [{"params": [p for p in model.parameters() if p.ndim == 2]},
              {"params": [p for p in model.parameters() if p.ndim < 2], "use_muon": False}]
    opt = Muon(groups, lr=0.02, adamw_lr=1e-2)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss.detach()

    first = float(opt.step(closure))
    for _ in range(30):
        last = float(opt.step(closure))
    assert calls == [True] * 31
    assert last < 0.8 * first


def test_param_groups_with_different_hyper_parameters_step_independently():
    ps, qs = _model(), _model()
    settings = [dict(lr=0.05, momentum=0.8, weight_decay=0.1, orthogonalizer="ns5"),
                dict(lr=0.01, momentum=0.95, nesterov=False, scale="spectral")]
    opt = Muon([{"params": [ps[0]], **settings[0]}, {"params": [ps[1]], **settings[1]}])
    alone = [Muon([qs[0]], **settings[0]), Muon([qs[1]], **settings[1])]
    for t in range(3):
        _set_grads(ps[:2], t)
        _set_grads(qs[:2], t)
        opt.step()
        for o in alone:
            o.step()
    _assert_same(ps[:2], qs[:2])


def test_optimizer_can_be_printed():
    text = repr(_make(_model()))
    assert "Muon (" in text and "use_muon: False" in text


def test_step_hooks_are_called():
    ps = _model()
    opt = _make(ps)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    _steps(opt, ps, 0, 2)
    assert seen == ["pre", "post"] * 2


# --- equality with torch.optim.Muon over torch's own Muon test inputs ------------------------

@pytest.mark.parametrize("kwargs", [
    {}, {"lr": 0.01}, {"lr": "tensor"}, {"weight_decay": 0.2}, {"momentum": 0.8},
    {"ns_steps": 6},
], ids=["default", "lr", "tensor-lr", "weight_decay", "momentum", "ns_steps"])
def test_equals_torch_muon_on_torchs_muon_inputs(kwargs):
    kw = {"lr": 1e-3, "weight_decay": 0.1, **kwargs}
    ps, qs = _model(), _model()

    def make_lr():
        return torch.tensor(0.001) if kw["lr"] == "tensor" else kw["lr"]

    ours = Muon(ps[:3], **{**kw, "lr": make_lr()}, orthogonalizer="ns5", scale="spectral")
    theirs = torch.optim.Muon(qs[:3], **{**kw, "lr": make_lr()})
    for t in range(4):
        _set_grads(ps[:3], t)
        _set_grads(qs[:3], t)
        ours.step()
        theirs.step()
    for x, y in zip(ps[:3], qs[:3]):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_tensor_lr_follows_a_scheduler():
    ps = _model()
    opt = Muon(ps[:3], lr=torch.tensor(0.02), orthogonalizer="ns5")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.0)
    _steps(opt, ps[:3], 0, 1)
    sched.step()
    assert float(opt.param_groups[0]["lr"]) == 0.0
    before = [p.detach().clone() for p in ps[:3]]
    _steps(opt, ps[:3], 1, 1)
    _assert_same(ps[:3], before)


# --- torch's error types for torch's error cases ----------------------------------------------

def test_bare_tensor_params_is_a_type_error():
    # Regression: list(W) split W into its rows and optimized those.
    with pytest.raises(TypeError, match="iterable of tensors"):
        Muon(torch.randn(4, 4, requires_grad=True))


def test_params_none_is_a_type_error():
    with pytest.raises(TypeError, match="got None"):
        Muon(None)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"lr": torch.tensor([0.001, 0.001])}, "one real number"),
    ({"lr": -0.1}, "lr must be"),
    ({"momentum": -0.5}, "momentum must be"),
    ({"weight_decay": -0.1}, "weight_decay must be"),
])
def test_bad_hyper_parameters_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon([torch.randn(4, 4, requires_grad=True)], **kwargs)


def test_complex_parameters_raise_torchs_runtime_error():
    p = torch.randn(2, 3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(RuntimeError, match="complex"):
        Muon([p])
    with pytest.raises(ValueError, match="complex"):  # and our own convention
        Muon([p])


def test_duplicate_parameters():
    p = torch.randn(3, 3, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Muon([p, p])
    assert any("duplicate parameters" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="more than one parameter group"):
        Muon([{"params": [p]}, {"params": [p]}])


def test_mixed_named_and_unnamed_parameters():
    p, q = torch.randn(3, 3, requires_grad=True), torch.randn(3, 3, requires_grad=True)
    with pytest.raises(ValueError, match="with/without names"):
        Muon([("w", p), q])


def test_one_dimensional_muon_parameter_is_a_value_error():
    with pytest.raises(ValueError, match=">= 2-D"):
        Muon([torch.randn(5, requires_grad=True)])
