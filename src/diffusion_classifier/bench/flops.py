"""FLOPs of one model call, attention included: what achieved TFLOP/s are computed from."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


@torch.inference_mode()
def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of fn() (2 per multiply-add) as torch's FlopCounterMode counts them.

    Attention runs on the math backend while counting: the fused CPU kernel has no FLOP formula and would
    count as zero, while the math path's matmuls are counted like any other (the same FLOPs a fused kernel does).
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def flops_per_call(model, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> int:
    """FLOPs of one row of model.predict_noise: counted on a batch of one, so padding or batching never enters."""
    return count_flops(lambda: model.predict_noise(x_t[:1], t[:1], cond[:1]))
