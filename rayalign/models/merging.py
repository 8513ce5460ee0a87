"""Weight-space interpolation of a fine-tuned model with the model it started from.

WiSE-FT (Wortsman et al., 2022): `weight * trained + (1 - weight) * start`, parameter by
parameter. Fine-tuning toward a narrow target (a preference stage teaching the bare-number
format) moves the weights a little way from a start that already knows the task; part of
the way back keeps most of the new behaviour and more of what the start knew.
"""

from __future__ import annotations

import torch


def interpolate_with_start_(
    model: torch.nn.Module, start: torch.nn.Module, weight: float
) -> torch.nn.Module:
    """Set every floating-point parameter of `model` to `weight * p + (1 - weight) * p_start`,
    in place, and return `model`.

    `start` must have the same parameter names and shapes (the checkpoint `model` was
    trained from). Tied parameters are updated once.

    Raises:
        ValueError: `weight` outside (0, 1], or the two models' parameters differ.
    """
    if not 0 < weight <= 1:
        raise ValueError(f"interpolation weight must be in (0, 1], got {weight}")
    start_params = dict(start.named_parameters())
    params = dict(model.named_parameters())
    missing = sorted(params.keys() - start_params.keys())
    if missing:
        raise ValueError(
            f"the starting model has no parameter {missing[0]!r} "
            f"({len(missing)} of {len(params)} missing): it is not the model training began from"
        )
    if weight == 1:
        return model
    with torch.no_grad():
        for name, p in params.items():
            q = start_params[name]
            if p.shape != q.shape:
                raise ValueError(
                    f"parameter {name!r}: shape {tuple(p.shape)} here, {tuple(q.shape)} in the "
                    "starting model"
                )
            if p.is_floating_point():
                p.mul_(weight).add_(q.to(device=p.device, dtype=p.dtype), alpha=1 - weight)
    return model
