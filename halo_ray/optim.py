"""SGD with momentum and AdamW, with ``torch.optim``'s arithmetic and state-dict format.

Why not ``torch.optim``: every ``torch.optim.Optimizer`` imports ``torch._dynamo`` when it is
built (``add_param_group`` is wrapped by ``torch._disable_dynamo``) and again at each
``step`` (``graph_break``), about 1.4 s of CPU in every learner, scorer and pre-training
process - a third of a search trial's learner start-up on a 2-core node (docs/benchmarks.md,
Ray). halo_ray never compiles, so it gains nothing from that import.

What stays the same: each update is the one ``torch.optim.SGD`` / ``torch.optim.AdamW``
(torch 2.13) make by default - elementwise, one tensor at a time on the CPU, with the
multi-tensor (``torch._foreach_*``) kernels on devices that have them (CUDA) - so a run gives
the same numbers as with ``torch.optim`` (tested bitwise on both paths). ``state_dict()`` is
``torch.optim``'s format (``state`` by parameter index, ``param_groups`` with the same keys),
so checkpoints written before this module load here and the other way round. Only what the
trainer uses is supported: no closures, ``maximize``, ``amsgrad``, fused or capturable
updates - a state dict asking for one is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.utils._foreach_utils import (
    _get_foreach_kernels_supported_devices,  # torch.optim's own list
)


def _foreach_default(params: list[torch.Tensor]) -> bool:
    """``torch.optim``'s default: multi-tensor kernels when every parameter is a plain tensor
    on a device that has them."""
    devices = _get_foreach_kernels_supported_devices()
    return bool(params) and all(type(p) in (torch.Tensor, torch.nn.Parameter) and p.device.type in devices for p in params)


def _by_device_and_dtype(*lists: list[torch.Tensor]) -> list[tuple[list[torch.Tensor], ...]]:
    """Split parallel lists by the first list's (device, dtype), keeping order in each part;
    multi-tensor kernels take one device and dtype per call."""
    parts: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], ...]] = {}
    for items in zip(*lists, strict=True):
        key = (items[0].device, items[0].dtype)
        part = parts.setdefault(key, tuple([] for _ in lists))
        for bucket, item in zip(part, items, strict=True):
            bucket.append(item)
    return list(parts.values())


class Optimizer:
    """What the trainer needs of an optimizer: ``param_groups`` (with ``lr`` and any extra
    keys such as ``lr_mult``), ``zero_grad``, ``step``, ``state_dict``/``load_state_dict``."""

    #: group settings a loaded state must have (as truth values): the features this module lacks are off
    REQUIRED: dict[str, bool] = {
        "maximize": False, "amsgrad": False, "differentiable": False, "capturable": False, "fused": False,
    }

    def __init__(self, params: Iterable[Any], defaults: Mapping[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.state: dict[torch.Tensor, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        groups = list(params)
        if not groups:
            raise ValueError("the optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        seen: set[int] = set()
        for group in groups:
            tensors = group["params"]
            tensors = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
            for p in tensors:
                if not isinstance(p, torch.Tensor) or not p.is_leaf:
                    raise ValueError(f"the optimizer can only update leaf tensors, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError("a parameter appears in more than one parameter group")
                seen.add(id(p))
            self.param_groups.append({**self.defaults, **group, "params": tensors})

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (``set_to_none``) or zero every parameter's gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().requires_grad_(False)
                    p.grad.zero_()

    def step(self) -> None:
        """One update of every parameter that has a gradient, group by group."""
        with torch.no_grad():
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if not params:
                    continue
                if any(p.grad.is_sparse for p in params):
                    raise RuntimeError(f"{type(self).__name__} does not update sparse gradients")
                foreach = group.get("foreach")
                self._update(group, params, _foreach_default(params) if foreach is None else bool(foreach))

    def _update(self, group: dict[str, Any], params: list[torch.Tensor], foreach: bool) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim``'s format: per-parameter state by index (counted over the groups in
        order), the groups' settings with their parameters as those indices."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Take a state from :meth:`state_dict` or from the same ``torch.optim`` class: the same
        number of groups and parameters per group; tensors are copied to each parameter's
        device (and floating dtype, except Adam's ``step`` count, kept as saved)."""
        name = type(self).__name__
        saved = state_dict.get("param_groups") if isinstance(state_dict, Mapping) else None
        if not isinstance(saved, list) or not isinstance(state_dict.get("state"), Mapping):
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups'")
        if len(saved) != len(self.param_groups):
            raise ValueError(
                f"{name}.load_state_dict: the state has {len(saved)} parameter groups, the optimizer {len(self.param_groups)}"
            )
        for i, (mine, theirs) in enumerate(zip(self.param_groups, saved, strict=True)):
            if len(mine["params"]) != len(theirs["params"]):
                raise ValueError(
                    f"{name}.load_state_dict: group {i} has {len(theirs['params'])} parameters in the state, "
                    f"{len(mine['params'])} in the optimizer"
                )
            for key, value in self.REQUIRED.items():
                if bool(theirs.get(key, value)) != value:
                    raise ValueError(f"{name}.load_state_dict: group {i} sets {key}={theirs[key]!r}, which halo_ray does not support")
        by_index = {
            index: p
            for group, theirs in zip(self.param_groups, saved, strict=True)
            for index, p in zip(theirs["params"], group["params"], strict=True)
        }
        state: dict[torch.Tensor, dict[str, Any]] = {}
        for index, values in state_dict["state"].items():
            p = by_index.get(int(index))
            if p is None:
                raise ValueError(f"{name}.load_state_dict: state for parameter {index}, which no group holds")
            state[p] = {key: self._placed(key, value, p) for key, value in values.items()}
        self.state = state
        self.param_groups = [
            {**{k: v for k, v in theirs.items() if k != "params"}, "params": mine["params"]}
            for mine, theirs in zip(self.param_groups, saved, strict=True)
        ]

    @staticmethod
    def _placed(key: str, value: Any, param: torch.Tensor) -> Any:
        """A saved state entry as this parameter's state: a copy on its device (and dtype for
        floating tensors); Adam's ``step`` stays a CPU count, as ``torch.optim`` keeps it."""
        if not isinstance(value, torch.Tensor):
            return value
        if key == "step":
            return value.clone()
        if value.is_floating_point():
            return value.to(device=param.device, dtype=param.dtype, copy=True)
        return value.to(device=param.device, copy=True)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and L2 weight decay (``torch.optim.SGD``'s
    update: ``g += wd·p``; ``buf = m·buf + (1 - dampening)·g`` (``buf = g`` at the first step);
    ``p -= lr·buf``, or ``lr·(g + m·buf)`` with Nesterov)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        foreach: bool | None = None,
    ) -> None:
        for label, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not value >= 0.0:
                raise ValueError(f"SGD {label} must be >= 0, but got {label}={value!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD nesterov=True needs momentum > 0 and dampening = 0")
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            maximize=False, foreach=foreach, differentiable=False, fused=None,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], params: list[torch.Tensor], foreach: bool) -> None:
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        weight_decay, nesterov = group["weight_decay"], group["nesterov"]
        bufs = [self.state.get(p, {}).get("momentum_buffer") for p in params]
        grads = [p.grad for p in params]
        if foreach:
            new_bufs = self._foreach(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov)
        else:
            new_bufs = self._single(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov)
        if momentum != 0:
            for p, buf in zip(params, new_bufs, strict=True):
                self.state.setdefault(p, {})["momentum_buffer"] = buf

    @staticmethod
    def _single(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov) -> list:
        """One tensor at a time (``torch.optim``'s CPU default)."""
        out = []
        for p, grad, buf in zip(params, grads, bufs, strict=True):
            if weight_decay != 0:
                grad = grad.add(p, alpha=weight_decay)
            if momentum != 0:
                if buf is None:
                    buf = grad.detach().clone()
                else:
                    buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                grad = grad.add(buf, alpha=momentum) if nesterov else buf
            out.append(buf)
            p.add_(grad, alpha=-lr)
        return out

    @staticmethod
    def _foreach(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov) -> list:
        """Multi-tensor kernels per (device, dtype) (``torch.optim``'s CUDA default)."""
        out: dict[int, torch.Tensor | None] = {id(p): b for p, b in zip(params, bufs, strict=True)}
        for part_params, part_grads, part_bufs in _by_device_and_dtype(params, grads, bufs):
            if weight_decay != 0:
                part_grads = torch._foreach_add(part_grads, part_params, alpha=weight_decay)
            if momentum != 0:
                if all(b is not None for b in part_bufs):
                    torch._foreach_mul_(part_bufs, momentum)
                    torch._foreach_add_(part_bufs, part_grads, alpha=1 - dampening)
                else:
                    fresh = []
                    for grad, buf in zip(part_grads, part_bufs, strict=True):
                        if buf is None:
                            buf = grad.detach().clone()
                        else:
                            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                        fresh.append(buf)
                    part_bufs = fresh
                for p, buf in zip(part_params, part_bufs, strict=True):
                    out[id(p)] = buf
                if nesterov:
                    torch._foreach_add_(part_grads, part_bufs, alpha=momentum)
                else:
                    part_grads = part_bufs
            torch._foreach_add_(part_params, part_grads, alpha=-lr)
        return [out[id(p)] for p in params]


class AdamW(Optimizer):
    """Adam with decoupled weight decay (``torch.optim.AdamW``'s update: ``p *= 1 - lr·wd``;
    first and second moments; ``p -= lr/(1-β₁ᵗ) · m / (√v/√(1-β₂ᵗ) + eps)``), the step count a
    float32 CPU scalar per parameter as ``torch.optim`` keeps it."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        foreach: bool | None = None,
    ) -> None:
        for label, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if not value >= 0.0:
                raise ValueError(f"AdamW {label} must be >= 0, but got {label}={value!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamW betas must be two numbers in [0, 1), but got betas={betas!r}")
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=False, maximize=False,
            foreach=foreach, capturable=False, differentiable=False, fused=None, decoupled_weight_decay=True,
        )
        super().__init__(params, defaults)

    #: and no Adam state (L2 decay through the gradient) loaded into AdamW
    REQUIRED = {**Optimizer.REQUIRED, "decoupled_weight_decay": True}

    def _update(self, group: dict[str, Any], params: list[torch.Tensor], foreach: bool) -> None:
        for p in params:
            if not self.state.get(p):
                self.state[p] = {
                    "step": torch.tensor(0.0, dtype=torch.float32),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        states = [self.state[p] for p in params]
        args = (
            params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states],
        )
        (self._foreach if foreach else self._single)(*args, group)

    @staticmethod
    def _single(params, grads, exp_avgs, exp_avg_sqs, steps, group) -> None:
        """One tensor at a time (``torch.optim``'s CPU default)."""
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p, grad, exp_avg, exp_avg_sq, step_t in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
            step_t += 1
            if weight_decay != 0:
                p.mul_(1 - lr * weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = step_t.item()
            step_size = lr / (1 - beta1**step)
            denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)

    @staticmethod
    def _foreach(params, grads, exp_avgs, exp_avg_sqs, steps, group) -> None:
        """Multi-tensor kernels per (device, dtype) (``torch.optim``'s CUDA default)."""
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for part in _by_device_and_dtype(params, grads, exp_avgs, exp_avg_sqs, steps):
            part_params, part_grads, part_avgs, part_sqs, part_steps = part
            if part_steps[0].is_cpu:
                torch._foreach_add_(part_steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
            else:
                torch._foreach_add_(part_steps, 1)
            if weight_decay != 0:
                torch._foreach_mul_(part_params, 1 - lr * weight_decay)
            torch._foreach_lerp_(part_avgs, part_grads, 1 - beta1)
            torch._foreach_mul_(part_sqs, beta2)
            torch._foreach_addcmul_(part_sqs, part_grads, part_grads, 1 - beta2)
            counts = [s.item() for s in part_steps]
            step_sizes = [(lr / (1 - beta1**t)) * -1 for t in counts]
            sqrt_bc2 = [(1 - beta2**t) ** 0.5 for t in counts]
            denom = torch._foreach_sqrt(part_sqs)
            torch._foreach_div_(denom, sqrt_bc2)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(part_params, part_avgs, denom, step_sizes)


__all__ = ["AdamW", "Optimizer", "SGD"]
