"""nn.Modules and the engine-style fused-experts function over the nvfp4moe ops.

Modules hold weights prepared for their device and draw scratch memory from the device's one
shared workspace (nvfp4moe.workspace), reserved when they are made, so a forward allocates only
its output and can be captured in a CUDA graph.
"""
import collections
import os
import threading
import weakref
from typing import Optional

import torch

from . import workspace as _workspace
from ._ops import _ops, check_errors, prepare_weights

_MODES = ("w4a16", "w4a4", "w4a8")
_SCALES = ("dynamic", "static")
_ACTIVATIONS = ("silu", "swiglu_clamped", "swigluoai")


def _choice(allowed, value, what):
    if value not in allowed:
        raise ValueError(f"nvfp4moe: {what} = {value!r}, expected one of {list(allowed)}")
    return value


def _per_expert_pair(scale, experts, what):
    """Gate/up scales as [2, E] (row 0 gate, row 1 up) from [E, 2], [2, E] or [E] (shared)."""
    scale = scale.to(torch.float32)
    if scale.dim() == 1 and scale.shape[0] == experts:
        return torch.stack([scale, scale]).contiguous()
    if scale.dim() == 2 and tuple(scale.shape) == (experts, 2):
        return scale.t().contiguous()
    if scale.dim() == 2 and tuple(scale.shape) == (2, experts):
        return scale.contiguous()
    raise ValueError(f"nvfp4moe: {what} has shape {tuple(scale.shape)}, expected [{experts}, 2], "
                     f"[2, {experts}] or [{experts}]")


def _per_expert(scale, experts, what):
    scale = scale.to(torch.float32)
    if scale.numel() != experts:
        raise ValueError(f"nvfp4moe: {what} has shape {tuple(scale.shape)}, expected "
                         f"[{experts}] (one per expert)")
    return scale.reshape(experts).contiguous()


def _as_int32_ids(topk_ids):
    """int32 ids; ids outside int32's range become out-of-range ids (reported as such), never
    another expert's id as a plain cast would make them."""
    if topk_ids.dtype == torch.int32:
        return topk_ids
    if topk_ids.dtype.is_floating_point or topk_ids.dtype == torch.bool:
        raise TypeError(f"nvfp4moe: topk_ids must be an integer tensor, got {topk_ids.dtype}")
    return topk_ids.clamp(-(2**31), 2**31 - 1).to(torch.int32)


class _Prepared(torch.nn.Module):
    """What the NVFP4 modules share: float32 scale buffers that dtype casts leave alone, and
    prepared weights that follow the module only where their layout stays valid."""

    # Buffers that stay float32 whatever module.to(dtype) / .half() / .bfloat16() asks.
    _FLOAT32_BUFFERS = ()

    def _apply(self, fn, recurse=True):
        before = {name: self._buffers[name] for name in self._FLOAT32_BUFFERS
                  if self._buffers.get(name) is not None}
        old_device = self._device
        super()._apply(fn, recurse)
        for name, original in before.items():
            moved = self._buffers[name]
            if moved.dtype != torch.float32:  # a dtype cast: keep the exact values
                self._buffers[name] = original.to(moved.device)
        new_device = next(iter(self._buffers.values())).device
        if new_device != old_device:
            self._moved(old_device, new_device)
        return self

    def _moved(self, old, new):
        # Prepared codes are in the checkpoint's layout on the CPU and in the GPU kernels' layout
        # on a GPU: CPU -> GPU prepares again, GPU -> GPU keeps them, GPU -> CPU cannot undo.
        if old.type == "cuda" and new.type == "cpu":
            raise RuntimeError(
                f"nvfp4moe: {type(self).__name__} holds weights prepared for {old}; make it on "
                "the CPU from the checkpoint tensors instead of moving it there")
        if old.type == "cpu" and new.type == "cuda":
            self._prepare_again()
        self._device = new
        self._reserve_workspace()

    @property
    def device(self):
        return self._device


class Nvfp4MoE(_Prepared):
    """The MoE layer of docs/numerics.md with NVFP4 experts (ModelOpt tensors).

    Weights of E local experts, H hidden, I intermediate:
      w13_weight uint8 [E, 2I, H/2] (gate rows then up rows), w13_weight_scale [E, 2I, H/16]
      (float8_e4m3fn or uint8), w13_weight_scale_2 [E, 2] (gate, up) or [E];
      w2_weight uint8 [E, H, I/2], w2_weight_scale [E, H, I/16], w2_weight_scale_2 [E];
      w13_input_scale / w2_input_scale [E] (or [E, 2] for w13: the larger is used) for static W4A4.
    Ids are global; this module holds experts [first_local_expert, first_local_expert + E) of
    num_experts (expert parallelism). Forwards carry at most max_tokens tokens; set_max_tokens
    raises the limit (outside CUDA-graph capture).
    """

    _FLOAT32_BUFFERS = ("w13_global_scale", "w2_global_scale", "w13_input_scale",
                        "w2_input_scale")

    def __init__(self, w13_weight, w13_weight_scale, w13_weight_scale_2, w2_weight,
                 w2_weight_scale, w2_weight_scale_2, *, top_k, max_tokens,
                 w13_input_scale=None, w2_input_scale=None, num_experts=None,
                 first_local_expert=0, mode="w4a16", activation="silu", swiglu_limit=10.0,
                 activation_scale="dynamic"):
        super().__init__()
        if w13_weight.dim() != 3 or w2_weight.dim() != 3:
            raise ValueError(
                f"nvfp4moe: w13_weight {tuple(w13_weight.shape)} and w2_weight "
                f"{tuple(w2_weight.shape)} must be 3-D [experts, rows, cols/2]")
        experts, two_i, half_h = w13_weight.shape
        if tuple(w2_weight.shape) != (experts, 2 * half_h, two_i // 4):
            raise ValueError(
                f"nvfp4moe: w2_weight has shape {tuple(w2_weight.shape)}, expected "
                f"[{experts}, {2 * half_h}, {two_i // 4}] for w13_weight {tuple(w13_weight.shape)}")
        self.local_experts = experts
        self.hidden = half_h * 2
        self.intermediate = two_i // 2
        self.top_k = int(top_k)
        self.max_tokens = int(max_tokens)
        self.num_experts = int(num_experts if num_experts is not None else experts)
        self.first_local_expert = int(first_local_expert)
        self.mode = _choice(_MODES, mode, "mode")
        self.activation = _choice(_ACTIVATIONS, activation, "activation")
        self.activation_scale = _choice(_SCALES, activation_scale, "activation_scale")
        self.swiglu_limit = float(swiglu_limit)
        self._device = w13_weight.device

        w13_codes, w13_scale_codes = prepare_weights(w13_weight, w13_weight_scale, True)
        w2_codes, w2_scale_codes = prepare_weights(w2_weight, w2_weight_scale, False)
        self.register_buffer("w13_codes", w13_codes)
        self.register_buffer("w13_scale_codes", w13_scale_codes)
        self.register_buffer("w2_codes", w2_codes)
        self.register_buffer("w2_scale_codes", w2_scale_codes)
        device = self._device
        self.register_buffer("w13_global_scale",
                             _per_expert_pair(w13_weight_scale_2, experts, "w13_weight_scale_2")
                             .to(device))
        self.register_buffer("w2_global_scale",
                             _per_expert(w2_weight_scale_2, experts, "w2_weight_scale_2").to(device))
        self.register_buffer("w13_input_scale", None if w13_input_scale is None else
                             _per_expert_pair(w13_input_scale, experts, "w13_input_scale")
                             .amax(dim=0).contiguous().to(device))
        self.register_buffer("w2_input_scale", None if w2_input_scale is None else
                             _per_expert(w2_input_scale, experts, "w2_input_scale").to(device))
        self.register_buffer("errors", torch.zeros(1, dtype=torch.int32, device=device),
                             persistent=False)
        self._reserve_workspace()

    def _workspace_bytes(self, device=None):
        return _ops.moe_workspace_bytes(
            self.num_experts, self.local_experts, self.first_local_expert, self.hidden,
            self.intermediate, self.top_k, self.max_tokens, self.mode, self.activation_scale,
            (device or self._device).type)

    def _reserve_workspace(self):
        self._workspace_nbytes = self._workspace_bytes()
        _workspace.reserve(self._device, self._workspace_nbytes)

    def set_max_tokens(self, max_tokens):
        """Raises (or lowers) the most tokens one forward may carry; reserves the workspace."""
        self.max_tokens = int(max_tokens)
        self._reserve_workspace()

    def _prepare_again(self):
        # The CPU codes are the checkpoint's bytes: prepare them for the GPU they moved to.
        experts, h, i = self.local_experts, self.hidden, self.intermediate
        for prefix, rows, k, gate_up in (("w13", 2 * i, h, True), ("w2", h, i, False)):
            values = self._buffers[f"{prefix}_codes"].view(experts, rows, k // 2)
            scales = self._buffers[f"{prefix}_scale_codes"].view(experts, rows, k // 16)
            codes, scale_codes = prepare_weights(values, scales, gate_up)
            self._buffers[f"{prefix}_codes"] = codes
            self._buffers[f"{prefix}_scale_codes"] = scale_codes

    @classmethod
    def from_checkpoint(cls, path, layer, *, top_k, max_tokens, device="cuda", prefix=None,
                        naming="hf", first_expert=0, num_local_experts=None, **options):
        """Loads MoE layer `layer` of an NVFP4 checkpoint (a .safetensors file, an index .json or
        a directory; ModelOpt or compressed-tensors, per-expert or fused tensors, detected) with
        the library's reader, which checks every tensor as `nvfp4moe inspect` does. `prefix`
        (with {layer}) and `naming` ("hf", "deepseek", "fused") name the experts explicitly."""
        tensors, total = _ops.load_moe_layer(os.fspath(path), int(layer), prefix, naming,
                                             int(first_expert), num_local_experts)
        names = ["w13_weight", "w13_weight_scale", "w13_weight_scale_2", "w2_weight",
                 "w2_weight_scale", "w2_weight_scale_2", "w13_input_scale", "w2_input_scale"]
        weights = {name: tensor.to(device) for name, tensor in zip(names, tensors)}
        return cls(**weights, top_k=top_k, max_tokens=max_tokens, num_experts=total,
                   first_local_expert=first_expert, **options)

    def forward(self, hidden_states, topk_weights, topk_ids):
        topk_ids = _as_int32_ids(topk_ids)
        if topk_weights.dtype != torch.float32:
            topk_weights = topk_weights.to(torch.float32)
        out = torch.empty_like(hidden_states)
        _ops.moe_forward(hidden_states, topk_ids, topk_weights, self.w13_codes,
                         self.w13_scale_codes, self.w13_global_scale, self.w2_codes,
                         self.w2_scale_codes, self.w2_global_scale, self.w13_input_scale,
                         self.w2_input_scale, self.num_experts, self.first_local_expert,
                         self.hidden, self.intermediate, self.top_k, self.max_tokens, self.mode,
                         self.activation_scale, self.activation, self.swiglu_limit,
                         _workspace.get(self._device, self._workspace_nbytes), self.errors, out)
        return out

    def check_errors(self):
        """Raises ValueError for ids out of range or non-finite W4A4 activations the GPU met in
        earlier forwards (the CPU raises from forward itself). Synchronizes."""
        check_errors(self.errors, self.num_experts)


class Nvfp4Linear(_Prepared):
    """A dense NVFP4 linear layer: weight uint8 [out, in/2], weight_scale [out, in/16],
    weight_scale_2 fp32 scalar; input_scale for static W4A4."""

    _FLOAT32_BUFFERS = ("global_scale", "input_scale")

    def __init__(self, weight, weight_scale, weight_scale_2, *, max_tokens, input_scale=None,
                 mode="w4a16", activation_scale="dynamic"):
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"nvfp4moe: weight has shape {tuple(weight.shape)}, expected 2-D "
                             "[out_features, in_features/2]")
        self.out_features, self.in_features = weight.shape[0], weight.shape[1] * 2
        self.max_tokens = int(max_tokens)
        self.mode = _choice(_MODES, mode, "mode")
        self.activation_scale = _choice(_SCALES, activation_scale, "activation_scale")
        self._device = weight.device
        codes, scale_codes = prepare_weights(weight, weight_scale, False)
        self.register_buffer("codes", codes)
        self.register_buffer("scale_codes", scale_codes)
        if weight_scale_2.numel() != 1:
            raise ValueError(f"nvfp4moe: weight_scale_2 has shape {tuple(weight_scale_2.shape)}, "
                             "expected one value")
        self.register_buffer("global_scale",
                             weight_scale_2.to(torch.float32).reshape(1).contiguous()
                             .to(self._device))
        self.register_buffer("input_scale", None if input_scale is None else
                             input_scale.to(torch.float32).reshape(1).contiguous()
                             .to(self._device))
        self.register_buffer("errors", torch.zeros(1, dtype=torch.int32, device=self._device),
                             persistent=False)
        self._reserve_workspace()

    def _reserve_workspace(self):
        self._workspace_nbytes = _ops.linear_workspace_bytes(
            self.in_features, self.out_features, self.max_tokens, self.mode,
            self.activation_scale, self._device.type)
        _workspace.reserve(self._device, self._workspace_nbytes)

    def _prepare_again(self):
        values = self._buffers["codes"].view(self.out_features, self.in_features // 2)
        scales = self._buffers["scale_codes"].view(self.out_features, self.in_features // 16)
        self._buffers["codes"], self._buffers["scale_codes"] = prepare_weights(values, scales,
                                                                               False)

    def forward(self, x):
        out = torch.empty(x.shape[0], self.out_features, dtype=torch.bfloat16, device=x.device)
        _ops.linear(x, self.codes, self.scale_codes, self.global_scale, self.input_scale,
                    self.out_features, self.max_tokens, self.mode, self.activation_scale,
                    _workspace.get(self._device, self._workspace_nbytes), self.errors, out)
        return out


# ---- fused_experts -------------------------------------------------------------------------------

class _LayerCache:
    """Layers made by fused_experts, least recently used first, at most `capacity`.

    A layer is found again only for the same weight tensors (the same Python objects, still
    alive: a tensor that died and whose storage a new one reuses is never mistaken for it), with
    the same data pointers, shapes, strides and dtypes, unchanged since (their version counters,
    which every in-place op and copy_ through the tensor advances), and the same options. Writes
    the counters cannot see (through `.data`, another alias, or DLPack) need invalidate().
    """

    def __init__(self, capacity):
        self.capacity = capacity
        self.layers = collections.OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def _identity(t):
        if t is None:
            return None
        version = None if t.is_inference() else t._version
        return (id(t), t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device, version)

    def key(self, tensors, options):
        return tuple(self._identity(t) for t in tensors) + options

    def get(self, key, tensors):
        with self.lock:
            entry = self.layers.get(key)
            if entry is None:
                return None
            refs, layer = entry
            if any(ref is not None and ref() is not t for ref, t in zip(refs, tensors)):
                del self.layers[key]  # an id reused by a new object
                return None
            self.layers.move_to_end(key)
            return layer

    def put(self, key, tensors, layer):
        refs = tuple(None if t is None else weakref.ref(t, lambda _, k=key: self._drop(k))
                     for t in tensors)
        with self.lock:
            self.layers[key] = (refs, layer)
            while len(self.layers) > self.capacity:
                self.layers.popitem(last=False)

    def _drop(self, key):
        with self.lock:
            self.layers.pop(key, None)

    def clear(self):
        with self.lock:
            self.layers.clear()


_LAYERS = _LayerCache(int(os.environ.get("NVFP4MOE_FUSED_EXPERTS_CACHE", "64")))


def invalidate():
    """Forgets every layer fused_experts prepared, so the next call prepares its weights again.
    Needed only after writes that bypass tensors' version counters (`param.data.copy_(...)`)."""
    _LAYERS.clear()


def _fused_experts_impl(hidden_states, w13_weight, w13_weight_scale, w13_weight_scale_2,
                        w2_weight, w2_weight_scale, w2_weight_scale_2, topk_weights, topk_ids,
                        w13_input_scale, w2_input_scale, activation, global_num_experts,
                        expert_map_first, mode, activation_scale, swiglu_limit, max_tokens):
    tensors = (w13_weight, w13_weight_scale, w13_weight_scale_2, w2_weight, w2_weight_scale,
               w2_weight_scale_2, w13_input_scale, w2_input_scale)
    tokens = hidden_states.shape[0]
    options = (topk_ids.shape[1], activation, global_num_experts, expert_map_first, mode,
               activation_scale, swiglu_limit)
    key = _LAYERS.key(tensors, options)
    layer = _LAYERS.get(key, tensors)
    if layer is None:
        if hidden_states.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "nvfp4moe.fused_experts: these weights were not prepared before CUDA-graph "
                "capture (preparing synchronizes); run one call outside the capture first")
        layer = Nvfp4MoE(w13_weight, w13_weight_scale, w13_weight_scale_2, w2_weight,
                         w2_weight_scale, w2_weight_scale_2, top_k=topk_ids.shape[1],
                         max_tokens=max(max_tokens, tokens), w13_input_scale=w13_input_scale,
                         w2_input_scale=w2_input_scale,
                         num_experts=None if global_num_experts < 0 else global_num_experts,
                         first_local_expert=expert_map_first, mode=mode, activation=activation,
                         swiglu_limit=swiglu_limit, activation_scale=activation_scale)
        _LAYERS.put(key, tensors, layer)
    if tokens > layer.max_tokens:
        layer.set_max_tokens(max(tokens, max_tokens, 2 * layer.max_tokens))  # raises in capture
    return layer(hidden_states, topk_weights, topk_ids)


@torch.library.custom_op("nvfp4moe::fused_experts", mutates_args=())
def _fused_experts_op(hidden_states: torch.Tensor, w13_weight: torch.Tensor,
                      w13_weight_scale: torch.Tensor, w13_weight_scale_2: torch.Tensor,
                      w2_weight: torch.Tensor, w2_weight_scale: torch.Tensor,
                      w2_weight_scale_2: torch.Tensor, topk_weights: torch.Tensor,
                      topk_ids: torch.Tensor, w13_input_scale: Optional[torch.Tensor],
                      w2_input_scale: Optional[torch.Tensor], activation: str,
                      global_num_experts: int, expert_map_first: int, quant_mode: str,
                      activation_scale: str, swiglu_limit: float,
                      max_tokens: int) -> torch.Tensor:
    return _fused_experts_impl(hidden_states, w13_weight, w13_weight_scale, w13_weight_scale_2,
                               w2_weight, w2_weight_scale, w2_weight_scale_2, topk_weights,
                               topk_ids, w13_input_scale, w2_input_scale, activation,
                               global_num_experts, expert_map_first, quant_mode, activation_scale,
                               swiglu_limit, max_tokens)


@_fused_experts_op.register_fake
def _(hidden_states, *args):
    return torch.empty_like(hidden_states)


def fused_experts(hidden_states, w13_weight, w13_weight_scale, w13_weight_scale_2, w2_weight,
                  w2_weight_scale, w2_weight_scale_2, topk_weights, topk_ids, *,
                  activation="silu", global_num_experts=None, expert_map_first=0,
                  w13_input_scale=None, w2_input_scale=None, mode="w4a16",
                  activation_scale="dynamic", swiglu_limit=10.0, max_tokens=None):
    """Engine-style fused MoE with NVFP4 weights, as in vLLM's fused_experts: the weights of this
    rank's experts [expert_map_first, expert_map_first + E) of global_num_experts.

    The first call for a set of weights prepares them (which synchronizes) and the layer is kept
    (see _LayerCache for when it is found again; at most NVFP4MOE_FUSED_EXPERTS_CACHE layers).
    A call may carry any number of tokens: the limit grows with the largest batch seen, outside
    CUDA-graph capture. Before capturing graphs, make one call per layer with max_tokens set to
    the largest batch the graphs will carry. An opaque custom op: torch.compile traces through
    it, and it runs under torch.inference_mode.
    """
    _choice(_MODES, mode, "mode")
    _choice(_ACTIVATIONS, activation, "activation")
    _choice(_SCALES, activation_scale, "activation_scale")
    # Inference only: quantized experts have no gradient, and detached inputs keep autograd
    # (and torch.compile's backward tracing) away from the op.
    return _fused_experts_op(hidden_states.detach(), w13_weight, w13_weight_scale,
                             w13_weight_scale_2, w2_weight, w2_weight_scale, w2_weight_scale_2,
                             topk_weights.detach(), topk_ids, w13_input_scale, w2_input_scale,
                             activation,
                             -1 if global_num_experts is None else int(global_num_experts),
                             int(expert_map_first), mode, activation_scale, float(swiglu_limit),
                             int(max_tokens or 0))
