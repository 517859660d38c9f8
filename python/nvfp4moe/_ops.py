"""Fake (meta) implementations of the ops, and thin Python wrappers that allocate outputs.

Every op writes into outputs its caller preallocated (Tensor! in the schemas), so the fake
implementations have nothing to compute: they only let torch.compile trace the calls.
"""
import torch

_ops = torch.ops.nvfp4moe


@torch.library.register_fake("nvfp4moe::quantize")
def _quantize_fake(x, global_scale, values, scales, global_scale_out):
    return None


@torch.library.register_fake("nvfp4moe::prepare_weights")
def _prepare_weights_fake(values, scales, gate_up, codes, scale_codes):
    return None


@torch.library.register_fake("nvfp4moe::moe_forward")
def _moe_forward_fake(hidden_states, topk_ids, topk_weights, w13_codes, w13_scale_codes,
                      w13_global_scale, w2_codes, w2_scale_codes, w2_global_scale,
                      w13_input_scale, w2_input_scale, num_experts, first_local_expert, hidden,
                      intermediate, top_k, max_tokens, quant_mode, activation_scale, activation,
                      swiglu_limit, workspace, errors, out):
    return None


@torch.library.register_fake("nvfp4moe::linear")
def _linear_fake(x, codes, scale_codes, global_scale, input_scale, out_features, max_tokens,
                 quant_mode, activation_scale, workspace, errors, out):
    return None


def quantize(x, global_scale=None):
    """NVFP4-quantizes x [rows, cols] (bf16 or fp32; cols % 16 == 0).

    Returns (values uint8 [rows, cols/2], scales float8_e4m3fn [rows, cols/16], global scale
    fp32 [1]): with global_scale None it is amax / 2688, computed on the device.
    """
    if x.dim() != 2:
        raise ValueError(f"nvfp4moe.quantize: x has shape {tuple(x.shape)}, expected 2-D "
                         "[rows, cols]")
    values = torch.empty(x.shape[0], x.shape[1] // 2, dtype=torch.uint8, device=x.device)
    scales = torch.empty(x.shape[0], x.shape[1] // 16, dtype=torch.float8_e4m3fn, device=x.device)
    g = torch.empty(1, dtype=torch.float32, device=x.device)
    _ops.quantize(x, global_scale, values, scales, g)
    return values, scales, g


def prepared_bytes(rows, k, device):
    """Bytes of the prepared codes and scale codes of one [rows, k] matrix on `device`."""
    return _ops.prepared_bytes(rows, k, torch.device(device).type)


def prepare_weights(values, scales, gate_up):
    """Weights (values uint8 [E, rows, k/2], scales [E, rows, k/16]) in the kernels' layout.

    gate_up: each matrix is [gate rows; up rows] (vLLM's w13). Load-time: it checks the scales
    on the host.
    """
    if values.dim() not in (2, 3):
        raise ValueError(f"nvfp4moe.prepare_weights: values has shape {tuple(values.shape)}, "
                         "expected [rows, k/2] or [experts, rows, k/2]")
    experts = values.shape[0] if values.dim() == 3 else 1
    rows, k = values.shape[-2], values.shape[-1] * 2
    code_bytes, scale_bytes = prepared_bytes(rows, k, values.device)
    codes = torch.empty(experts * code_bytes, dtype=torch.uint8, device=values.device)
    scale_codes = torch.empty(experts * scale_bytes, dtype=torch.uint8, device=values.device)
    _ops.prepare_weights(values, scales, gate_up, codes, scale_codes)
    return codes, scale_codes


def check_errors(errors, num_experts):
    """Raises ValueError for input problems the GPU found since the last check (ids outside
    [-1, num_experts), NaN/Inf in W4A4 activations); their slots were skipped. Clears the word.
    Synchronizes, so call it outside CUDA-graph capture."""
    flags = int(errors.item())
    errors.zero_()
    if flags:
        _ops.raise_errors(flags, num_experts, "nvfp4moe")
