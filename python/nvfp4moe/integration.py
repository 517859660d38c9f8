"""The engine-neutral half of the engine integrations: from the parameter tensors an engine's
loader filled (in either producer's convention) to prepared layers, and the forward an engine's
MoE or linear layer calls. No engine is imported here, so all of it runs (and is tested) where
the engine cannot be installed, e.g. on the GPU machine; nvfp4moe.vllm_plugin adapts it to vLLM.

Conventions of the tensors (per local expert e; gate/up pairs as [E, 2]):
  ModelOpt            weight_scale_2 = g,  input_scale = g_input
  compressed-tensors  weight_global_scale = 1/g,  input_global_scale = 1/g_input
"""
import fnmatch
import re

import torch

from .module import Nvfp4Linear, Nvfp4MoE

MODELOPT = "modelopt"
COMPRESSED_TENSORS = "compressed-tensors"


def global_scales(format, stored):
    """g from the stored per-tensor scales of `format` (a copy, float32)."""
    stored = stored.to(torch.float32)
    if format == COMPRESSED_TENSORS:
        return 1.0 / stored
    if format == MODELOPT:
        return stored.clone()
    raise ValueError(f"nvfp4moe: unknown checkpoint format {format!r}, expected "
                     f"{MODELOPT!r} or {COMPRESSED_TENSORS!r}")


def moe_activation(activation, swiglu_limit=None, swiglu_alpha=None, swiglu_beta=None):
    """The library's activation for an engine's MoE activation name, or ValueError (raised when
    the model loads, never a wrong output): SiLU-gated, optionally clamped (DeepSeek-V4)."""
    name = getattr(activation, "value", activation)
    if name != "silu" or swiglu_alpha is not None or swiglu_beta is not None:
        raise ValueError(
            f"nvfp4moe: MoE activation {name!r}"
            + (f" with swiglu_alpha={swiglu_alpha}, swiglu_beta={swiglu_beta}"
               if swiglu_alpha is not None or swiglu_beta is not None else "")
            + " is not supported; nvfp4moe runs 'silu' (SwiGLU) and DeepSeek-V4's clamped "
            "SwiGLU (silu with swiglu_limit)")
    if swiglu_limit is None:
        return "silu", 10.0
    return "swiglu_clamped", float(swiglu_limit)


class MoeExperts:
    """One MoE layer's local experts, prepared for their device, and the forward over an
    engine's routing.

    topk_ids are global expert ids; `expert_map` ([global experts] int32, local index or -1, as
    vLLM keeps it) maps them to this rank's experts, whatever the placement. Without a map the
    layer holds every expert.
    """

    def __init__(self, format, w13_weight, w13_weight_scale, w13_scale, w2_weight,
                 w2_weight_scale, w2_scale, *, top_k, max_tokens, activation="silu",
                 swiglu_limit=10.0, w13_input_scale=None, w2_input_scale=None, mode="w4a16",
                 activation_scale="dynamic"):
        experts = w13_weight.shape[0]
        w13_g = global_scales(format, w13_scale).reshape(experts, -1)
        inputs = {}
        if w13_input_scale is not None and w2_input_scale is not None:
            inputs = {"w13_input_scale": global_scales(format, w13_input_scale).reshape(experts, -1)
                      .amax(dim=1),
                      "w2_input_scale": global_scales(format, w2_input_scale).reshape(experts)}
        self.module = Nvfp4MoE(
            w13_weight, w13_weight_scale,
            w13_g if w13_g.shape[1] == 2 else w13_g.reshape(experts),
            w2_weight, w2_weight_scale, global_scales(format, w2_scale).reshape(experts),
            top_k=top_k, max_tokens=max_tokens, activation=activation, swiglu_limit=swiglu_limit,
            mode=mode, activation_scale=activation_scale, **inputs)

    @property
    def max_tokens(self):
        return self.module.max_tokens

    def apply(self, x, topk_weights, topk_ids, expert_map=None,
              apply_router_weight_on_input=False):
        """out [T, H] bf16 of x [T, H] routed by topk_weights/topk_ids [T, k]."""
        if expert_map is not None:
            topk_ids = expert_map[topk_ids.long()]
        if apply_router_weight_on_input:
            if topk_weights.shape[1] != 1:
                raise ValueError("nvfp4moe: apply_router_weight_on_input needs top_k = 1, got "
                                 f"{topk_weights.shape[1]}")
            x = (x.float() * topk_weights.float()).to(x.dtype)
            topk_weights = torch.ones_like(topk_weights, dtype=torch.float32)
        return self.module(x, topk_weights, topk_ids)


class DenseLinear:
    """A dense NVFP4 linear layer whose rows may come from several fused shards (q, k, v of a
    QKV projection), each with its own global scale: one prepared weight per run of shards that
    share a scale, outputs concatenated. (Taking the largest scale for all, as some engines do,
    would dequantize the others wrongly.)"""

    def __init__(self, format, weight, weight_scale, stored_scales, shard_sizes, *, max_tokens,
                 input_scales=None, mode="w4a16", activation_scale="dynamic"):
        g = global_scales(format, stored_scales).reshape(-1).cpu()
        if g.numel() != len(shard_sizes):
            raise ValueError(f"nvfp4moe: {g.numel()} global scales for {len(shard_sizes)} "
                             "shards")
        inputs = None if input_scales is None else global_scales(format, input_scales).reshape(-1)
        self.parts = []
        begin = 0
        shard = 0
        while shard < len(shard_sizes):
            end_shard = shard + 1
            while end_shard < len(shard_sizes) and g[end_shard] == g[shard]:
                end_shard += 1
            rows = sum(shard_sizes[shard:end_shard])
            input_scale = None if inputs is None else inputs[shard:end_shard].amax().reshape(1)
            self.parts.append(Nvfp4Linear(
                weight[begin:begin + rows].contiguous(),
                weight_scale[begin:begin + rows].contiguous(),
                g[shard].reshape(1).to(weight.device), max_tokens=max_tokens,
                input_scale=input_scale, mode=mode, activation_scale=activation_scale))
            begin += rows
            shard = end_shard
        self.out_features = begin

    def apply(self, x, bias=None):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        dtype = x.dtype
        if dtype != torch.bfloat16:
            x = x.to(torch.bfloat16)
        outputs = [part(x) for part in self.parts]
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        if bias is not None:
            out = out + bias.to(out.dtype)
        return out.to(dtype).reshape(*shape[:-1], self.out_features)


def module_excluded(prefix, patterns, packed_modules=None):
    """Whether the module `prefix` stays unquantized under a checkpoint's exclusion list
    (ModelOpt's exclude_modules / ignore: names and wildcards; compressed-tensors' ignore: names
    and 're:' regular expressions). A fused module (qkv_proj) is excluded when all its shards
    are; a mix is an error, since one weight cannot be half quantized."""
    def matches(name):
        for pattern in patterns:
            if pattern.startswith("re:"):
                if re.fullmatch(pattern[3:], name):
                    return True
            elif name == pattern or fnmatch.fnmatchcase(name, pattern) or \
                    name.startswith(pattern.rstrip("*").rstrip(".") + "."):
                return True
        return False

    leaf = prefix.rsplit(".", 1)[-1]
    shards = (packed_modules or {}).get(leaf)
    if not shards:
        return matches(prefix)
    base = prefix[: len(prefix) - len(leaf)]
    excluded = [matches(base + shard) for shard in shards]
    if any(excluded) and not all(excluded):
        raise ValueError(f"nvfp4moe: {prefix} fuses {shards}, but the checkpoint quantizes only "
                         f"some of them ({[s for s, e in zip(shards, excluded) if not e]})")
    return all(excluded) or matches(prefix)
