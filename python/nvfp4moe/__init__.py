"""nvfp4moe for PyTorch: NVFP4 Mixture-of-Experts layers as custom ops.

    import nvfp4moe
    moe = nvfp4moe.Nvfp4MoE.from_checkpoint("DeepSeek-R1-FP4/", layer=3, top_k=8,
                                           max_tokens=256, device="cuda")
    out = moe(hidden_states, topk_weights, topk_ids)

The ops (torch.ops.nvfp4moe.*) have CPU and CUDA implementations and fake implementations, so
torch.compile(fullgraph=True) traces through them and CUDA graphs capture them.
"""
import os as _os

import torch as _torch

_torch.ops.load_library(_os.path.join(_os.path.dirname(__file__), "_C.so"))

from . import _ops  # noqa: E402,F401  (fake implementations)
from ._ops import (  # noqa: E402
    check_errors,
    prepare_weights,
    prepared_bytes,
    quantize,
)
from . import workspace  # noqa: E402
from .module import Nvfp4Linear, Nvfp4MoE, fused_experts, invalidate  # noqa: E402

__all__ = [
    "Nvfp4Linear",
    "Nvfp4MoE",
    "check_errors",
    "fused_experts",
    "invalidate",
    "prepare_weights",
    "prepared_bytes",
    "quantize",
    "workspace",
]
