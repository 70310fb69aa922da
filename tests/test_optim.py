"""halo_ray's SGD and AdamW: ``torch.optim``'s numbers, bit for bit, and its state-dict format.

The trainer uses them instead of ``torch.optim`` only to keep ``torch._dynamo`` (~1.4 s of CPU)
out of every learner process; the arithmetic must not change. Each test runs the same
parameters, gradients and learning-rate schedule through both and compares exactly, on the
one-tensor-at-a-time path (the CPU default) and the multi-tensor path (the CUDA default, run
here on the CPU with ``foreach=True`` on both sides).
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys

import pytest
import torch

from halo_ray.optim import SGD, AdamW

FOREACH = [False, True]


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3, 3, 3), (4,), (7, 5), (5,), (2, 2)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def _groups(params: list[torch.nn.Parameter]) -> list[dict]:
    """Two groups with different ``lr_mult``, as the trainer's ``head_lr_mult`` makes."""
    return [{"params": params[:3], "lr_mult": 1.0}, {"params": params[3:], "lr_mult": 10.0}]


def _run(opt, params, steps: int, start: int = 0, seed: int = 1) -> None:
    """``steps`` updates with fixed pseudo-random gradients and a decaying rate; parameter 4
    has no gradient at odd steps (it must then be left alone, state and all)."""
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(seed * 1000 + step)
        for group in opt.param_groups:
            group["lr"] = 0.05 * (1 - step / 20) ** 0.9 * group["lr_mult"]
        opt.zero_grad(set_to_none=True)
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen)
            if not (i == 4 and step % 2):
                p.grad = g
        opt.step()


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _states_equal(ours: dict, theirs: dict) -> None:
    assert ours["state"].keys() == theirs["state"].keys()
    for index, values in theirs["state"].items():
        assert values.keys() == ours["state"][index].keys()
        for key, value in values.items():
            assert torch.equal(ours["state"][index][key], value), (index, key)
    for mine, other in zip(ours["param_groups"], theirs["param_groups"], strict=True):
        assert set(mine) == set(other)
        assert mine["params"] == other["params"]


SGD_SETTINGS = [
    dict(momentum=0.9, weight_decay=5e-4),
    dict(momentum=0.9, weight_decay=0.0),
    dict(momentum=0.0, weight_decay=1e-3),
    dict(momentum=0.9, weight_decay=5e-4, nesterov=True),
    dict(momentum=0.5, dampening=0.1, weight_decay=5e-4),
]


@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_sgd_updates_are_torch_optims_bit_for_bit(foreach, settings):
    ours_p, torch_p = _params(), _params()
    ours = SGD(_groups(ours_p), lr=0.01, foreach=foreach, **settings)
    theirs = torch.optim.SGD(_groups(torch_p), lr=0.01, foreach=foreach, **settings)
    _run(ours, ours_p, 6)
    _run(theirs, torch_p, 6)
    assert _same(ours_p, torch_p)
    _states_equal(ours.state_dict(), theirs.state_dict())


@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("weight_decay", [0.01, 0.0])
def test_adamw_updates_are_torch_optims_bit_for_bit(foreach, weight_decay):
    ours_p, torch_p = _params(), _params()
    ours = AdamW(_groups(ours_p), lr=6e-5, weight_decay=weight_decay, foreach=foreach)
    theirs = torch.optim.AdamW(_groups(torch_p), lr=6e-5, weight_decay=weight_decay, foreach=foreach)
    _run(ours, ours_p, 6)
    _run(theirs, torch_p, 6)
    assert _same(ours_p, torch_p)
    _states_equal(ours.state_dict(), theirs.state_dict())
    assert ours.state_dict()["state"][0]["step"].dtype == torch.float32  # a CPU count, as torch keeps it


def test_the_default_path_is_torch_optims_default_for_the_device():
    """``foreach=None`` picks what ``torch.optim`` picks: one tensor at a time on the CPU."""
    for ours_cls, torch_cls in ((SGD, torch.optim.SGD), (AdamW, torch.optim.AdamW)):
        ours_p, torch_p = _params(), _params()
        kwargs = dict(momentum=0.9, weight_decay=5e-4) if ours_cls is SGD else {}
        ours, theirs = ours_cls(_groups(ours_p), lr=0.01, **kwargs), torch_cls(_groups(torch_p), lr=0.01, **kwargs)
        _run(ours, ours_p, 3)
        _run(theirs, torch_p, 3)
        assert _same(ours_p, torch_p), ours_cls.__name__


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_a_state_saved_by_one_resumes_in_the_other_bit_for_bit(direction, kind):
    """Checkpoints written with ``torch.optim`` (before halo_ray had its own) resume here, and
    the other way round, through ``torch.save``/``torch.load(weights_only=True)``."""
    ours_cls, torch_cls = (SGD, torch.optim.SGD) if kind == "sgd" else (AdamW, torch.optim.AdamW)
    kwargs = dict(momentum=0.9, weight_decay=5e-4) if kind == "sgd" else dict(weight_decay=0.01)
    first_cls, second_cls = (torch_cls, ours_cls) if direction == "torch_to_ours" else (ours_cls, torch_cls)
    params = _params()
    first = first_cls(_groups(params), lr=0.01, **kwargs)
    _run(first, params, 4)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optimizer": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_p = [torch.nn.Parameter(t.clone()) for t in saved["params"]]
    second = second_cls(_groups(resumed_p), lr=0.5, **kwargs)
    second.load_state_dict(saved["optimizer"])
    _run(first, params, 4, start=4)
    _run(second, resumed_p, 4, start=4)
    assert _same(params, resumed_p)


def test_loading_a_state_does_not_alias_the_saved_tensors():
    """The loaded state is a copy: updates after loading leave the dict it came from as it was
    (a cached 'best' state must not drift)."""
    params = _params()
    opt = SGD(_groups(params), lr=0.01, momentum=0.9)
    _run(opt, params, 2)
    saved = copy.deepcopy(opt.state_dict())
    kept = copy.deepcopy(saved)
    opt.load_state_dict(saved)
    _run(opt, params, 2, start=2)
    _states_equal(saved, kept)


def test_a_mismatched_or_unsupported_state_is_refused_naming_what_differs():
    params = _params()
    opt = SGD(_groups(params), lr=0.01, momentum=0.9)
    _run(opt, params, 1)
    state = opt.state_dict()
    one_group = SGD(params, lr=0.01, momentum=0.9)
    with pytest.raises(ValueError, match="2 parameter groups, the optimizer 1"):
        one_group.load_state_dict(state)
    fewer = SGD(_groups(params[:4]), lr=0.01, momentum=0.9)
    with pytest.raises(ValueError, match="group 1 has 2 parameters in the state, 1 in the optimizer"):
        fewer.load_state_dict(state)
    amsgrad = torch.optim.AdamW(_groups(_params()), amsgrad=True).state_dict()
    with pytest.raises(ValueError, match="amsgrad=True"):
        AdamW(_groups(_params())).load_state_dict(amsgrad)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})


def test_bad_settings_are_refused_naming_the_value():
    with pytest.raises(ValueError, match="lr=-0.1"):
        SGD(_params(), lr=-0.1)
    with pytest.raises(ValueError, match="momentum > 0"):
        SGD(_params(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"betas=\(0.9, 1.0\)"):
        AdamW(_params(), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    shared = _params()
    with pytest.raises(ValueError, match="more than one parameter group"):
        SGD([{"params": shared}, {"params": shared[:1]}], lr=0.1)


def test_an_update_never_imports_torch_dynamo():
    """The reason for this module: a fresh process that builds, steps, saves and reloads both
    optimizers has not imported ``torch._dynamo`` (``torch.optim`` would have)."""
    code = """
import io, sys, torch
from halo_ray.optim import SGD, AdamW
for cls in (SGD, AdamW):
    p = torch.nn.Parameter(torch.ones(3))
    opt = cls([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    opt.zero_grad()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt.load_state_dict(torch.load(buffer, weights_only=True))
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_cuda_updates_are_torch_optims_default_bit_for_bit(kind):
    """On CUDA both take the multi-tensor kernels by default."""
    ours_cls, torch_cls = (SGD, torch.optim.SGD) if kind == "sgd" else (AdamW, torch.optim.AdamW)
    kwargs = dict(momentum=0.9, weight_decay=5e-4) if kind == "sgd" else dict(weight_decay=0.01)
    ours_p = [torch.nn.Parameter(p.detach().cuda()) for p in _params()]
    torch_p = [torch.nn.Parameter(p.detach().cuda()) for p in _params()]
    ours, theirs = ours_cls(_groups(ours_p), lr=0.01, **kwargs), torch_cls(_groups(torch_p), lr=0.01, **kwargs)
    for opt, params in ((ours, ours_p), (theirs, torch_p)):
        for step in range(4):
            gen = torch.Generator().manual_seed(step)
            opt.zero_grad()
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).cuda()
            opt.step()
    assert _same(ours_p, torch_p)
