"""Per-parameter optimiser hints, declared where a parameter is made (the S4 repository's `register`).

    self.log_dt = register(self, "log_dt", torch.rand(H), lr=ssm_lr, weight_decay=0.0)
    optim_hints(model)  # {"blocks.0.mixer.kernel.log_dt": {"lr": 1e-3, "weight_decay": 0.0}, ...}

A hint lives in a plain dict on the module that owns the parameter, keyed by the parameter's local
name, never on the tensor: `copy.deepcopy`, `.to(dtype)` and `load_state_dict` all keep a module's
attributes, while attributes set on a tensor are lost by deepcopy. `optim_hints` qualifies the names
as `model.named_parameters()` does, which is how the trainer (`bench.train.param_groups`) reads them.
"""

from __future__ import annotations

from torch import Tensor, nn

HINTS_ATTR = "_optim_hints"  # {local parameter name: hint} on the owning module


def register(module: nn.Module, name: str, tensor: Tensor, *, lr: float | None = None,
             weight_decay: float | None = None) -> nn.Parameter:
    """Register `tensor` as parameter `name` of `module`, with its optimiser hint; returns the parameter.

    `lr` caps the parameter's learning rate, `weight_decay` replaces the default; only the keys given
    are recorded. `tensor` may already be a Parameter of `module` (an entry of an nn.ParameterList,
    registered again under its own name to attach the hint)."""
    param = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor)
    module.register_parameter(name, param)
    hint = {k: v for k, v in (("lr", lr), ("weight_decay", weight_decay)) if v is not None}
    if hint:
        if HINTS_ATTR not in module.__dict__:
            setattr(module, HINTS_ATTR, {})
        getattr(module, HINTS_ATTR)[name] = hint
    return param


def optim_hints(model: nn.Module) -> dict[str, dict[str, float]]:
    """{qualified parameter name: {"lr": cap, "weight_decay": wd}} for every hinted parameter of `model`,
    names as in `model.named_parameters()` (a parameter shared under two names is listed once there)."""
    names = {name for name, _ in model.named_parameters()}
    hints = {}
    for prefix, module in model.named_modules():
        for name, hint in module.__dict__.get(HINTS_ATTR, {}).items():
            qualified = f"{prefix}.{name}" if prefix else name
            if qualified in names:
                hints[qualified] = dict(hint)
    return hints
