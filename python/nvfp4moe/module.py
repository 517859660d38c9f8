"""nn.Modules and the engine-style fused-experts function over the nvfp4moe ops."""
import torch

from ._ops import _ops, check_errors, prepare_weights

_MODES = {"w4a16": 0, "w4a4": 1}
_SCALES = {"dynamic": 0, "static": 1}
_ACTIVATIONS = {"silu": 0, "swiglu_clamped": 1}


def _choice(table, value, what):
    if value not in table:
        raise ValueError(f"nvfp4moe: {what} = {value!r}, expected one of {sorted(table)}")
    return table[value]


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


class Nvfp4MoE(torch.nn.Module):
    """The MoE layer of DESIGN §4 with NVFP4 experts (ModelOpt tensors).

    Weights of E local experts, H hidden, I intermediate:
      w13_weight uint8 [E, 2I, H/2] (gate rows then up rows), w13_weight_scale [E, 2I, H/16]
      (float8_e4m3fn or uint8), w13_weight_scale_2 [E, 2] (gate, up) or [E];
      w2_weight uint8 [E, H, I/2], w2_weight_scale [E, H, I/16], w2_weight_scale_2 [E];
      w13_input_scale / w2_input_scale [E] (or [E, 2] for w13: the larger is used) for static W4A4.
    The workspace for max_tokens is reserved here, so forward allocates only its output and can
    be captured in a CUDA graph. Ids are global; this module holds experts
    [first_local_expert, first_local_expert + E) of num_experts (expert parallelism).
    """

    def __init__(self, w13_weight, w13_weight_scale, w13_weight_scale_2, w2_weight,
                 w2_weight_scale, w2_weight_scale_2, *, top_k, max_tokens,
                 w13_input_scale=None, w2_input_scale=None, num_experts=None,
                 first_local_expert=0, mode="w4a16", activation="silu", swiglu_limit=10.0,
                 activation_scale="dynamic"):
        super().__init__()
        if w13_weight.dim() != 3 or w2_weight.dim() != 3:
            raise ValueError("nvfp4moe: w13_weight and w2_weight must be [E, rows, cols/2]")
        experts, two_i, half_h = w13_weight.shape
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
        device = w13_weight.device

        w13_codes, w13_scale_codes = prepare_weights(w13_weight, w13_weight_scale, True)
        w2_codes, w2_scale_codes = prepare_weights(w2_weight, w2_weight_scale, False)
        self.register_buffer("w13_codes", w13_codes)
        self.register_buffer("w13_scale_codes", w13_scale_codes)
        self.register_buffer("w2_codes", w2_codes)
        self.register_buffer("w2_scale_codes", w2_scale_codes)
        self.register_buffer("w13_global_scale",
                             _per_expert_pair(w13_weight_scale_2, experts, "w13_weight_scale_2")
                             .to(device))
        self.register_buffer("w2_global_scale",
                             w2_weight_scale_2.to(torch.float32).reshape(experts).contiguous()
                             .to(device))
        self.register_buffer("w13_input_scale", None if w13_input_scale is None else
                             _per_expert_pair(w13_input_scale, experts, "w13_input_scale")
                             .amax(dim=0).contiguous().to(device))
        self.register_buffer("w2_input_scale", None if w2_input_scale is None else
                             w2_input_scale.to(torch.float32).reshape(experts).contiguous()
                             .to(device))
        workspace_bytes = _ops.moe_workspace_bytes(
            self.num_experts, experts, self.first_local_expert, self.hidden, self.intermediate,
            self.top_k, self.max_tokens, self.mode, self.activation_scale, device.type)
        self.register_buffer("workspace",
                             torch.empty(max(workspace_bytes, 1), dtype=torch.uint8,
                                         device=device), persistent=False)
        self.register_buffer("errors", torch.zeros(1, dtype=torch.int32, device=device),
                             persistent=False)

    @classmethod
    def from_checkpoint(cls, path, layer, *, top_k, max_tokens, device="cuda",
                        prefix="model.layers.{layer}.mlp.experts.", naming="hf",
                        first_expert=0, num_local_experts=None, **options):
        """Loads MoE layer `layer` of a ModelOpt NVFP4 checkpoint (a .safetensors file, an index
        .json or a directory) with the official safetensors reader."""
        from ._checkpoint import load_moe_layer
        tensors = load_moe_layer(path, layer, prefix=prefix, naming=naming,
                                 first_expert=first_expert, num_experts=num_local_experts,
                                 device=device)
        return cls(**tensors["weights"], top_k=top_k, max_tokens=max_tokens,
                   num_experts=tensors["num_experts"], first_local_expert=first_expert, **options)

    def forward(self, hidden_states, topk_weights, topk_ids):
        if topk_ids.dtype != torch.int32:
            topk_ids = topk_ids.to(torch.int32)
        if topk_weights.dtype != torch.float32:
            topk_weights = topk_weights.to(torch.float32)
        out = torch.empty_like(hidden_states)
        _ops.moe_forward(hidden_states, topk_ids, topk_weights, self.w13_codes,
                         self.w13_scale_codes, self.w13_global_scale, self.w2_codes,
                         self.w2_scale_codes, self.w2_global_scale, self.w13_input_scale,
                         self.w2_input_scale, self.num_experts, self.first_local_expert,
                         self.hidden, self.intermediate, self.top_k, self.max_tokens, self.mode, self.activation_scale,
                         self.activation, self.swiglu_limit, self.workspace, self.errors, out)
        return out

    def check_errors(self):
        """Raises ValueError for ids out of range or non-finite W4A4 activations the GPU met in
        earlier forwards (the CPU raises from forward itself). Synchronizes."""
        check_errors(self.errors, self.num_experts)


class Nvfp4Linear(torch.nn.Module):
    """A dense NVFP4 linear layer: weight uint8 [out, in/2], weight_scale [out, in/16],
    weight_scale_2 fp32 scalar; input_scale for static W4A4."""

    def __init__(self, weight, weight_scale, weight_scale_2, *, max_tokens, input_scale=None,
                 mode="w4a16", activation_scale="dynamic"):
        super().__init__()
        self.out_features, self.in_features = weight.shape[0], weight.shape[1] * 2
        self.max_tokens = int(max_tokens)
        self.mode = _choice(_MODES, mode, "mode")
        self.activation_scale = _choice(_SCALES, activation_scale, "activation_scale")
        device = weight.device
        codes, scale_codes = prepare_weights(weight, weight_scale, False)
        self.register_buffer("codes", codes)
        self.register_buffer("scale_codes", scale_codes)
        self.register_buffer("global_scale",
                             weight_scale_2.to(torch.float32).reshape(1).contiguous().to(device))
        self.register_buffer("input_scale", None if input_scale is None else
                             input_scale.to(torch.float32).reshape(1).contiguous().to(device))
        workspace_bytes = _ops.linear_workspace_bytes(self.in_features, self.out_features,
                                                      self.max_tokens, self.mode,
                                                      self.activation_scale, device.type)
        self.register_buffer("workspace", torch.empty(max(workspace_bytes, 1), dtype=torch.uint8,
                                                      device=device), persistent=False)
        self.register_buffer("errors", torch.zeros(1, dtype=torch.int32, device=device),
                             persistent=False)

    def forward(self, x):
        out = torch.empty(x.shape[0], self.out_features, dtype=torch.bfloat16, device=x.device)
        _ops.linear(x, self.codes, self.scale_codes, self.global_scale, self.input_scale,
                    self.out_features, self.max_tokens, self.mode, self.activation_scale,
                    self.workspace, self.errors, out)
        return out


# Layers made by fused_experts, keyed by everything that determines them: the identity and
# version of every weight tensor, shapes, dtypes, device and options. (Keying by role alone once
# served one layer's scales to another.)
_LAYERS = {}


def _tensor_key(t):
    if t is None:
        return None
    return (t.data_ptr(), tuple(t.shape), t.dtype, t.device, t._version)


def fused_experts(hidden_states, w13_weight, w13_weight_scale, w13_weight_scale_2, w2_weight,
                  w2_weight_scale, w2_weight_scale_2, topk_weights, topk_ids, *,
                  activation="silu", global_num_experts=None, expert_map_first=0,
                  w13_input_scale=None, w2_input_scale=None, mode="w4a16",
                  activation_scale="dynamic", swiglu_limit=10.0, max_tokens=None):
    """Engine-style fused MoE with NVFP4 weights, as in vLLM's fused_experts: the weights of this
    rank's experts [expert_map_first, expert_map_first + E) of global_num_experts.

    The prepared weights and the workspace are made on the first call for a set of weights and
    reused; pass max_tokens (the largest batch you will run) before capturing CUDA graphs, since
    the first call prepares weights (which synchronizes).
    """
    key = (tuple(_tensor_key(t) for t in (w13_weight, w13_weight_scale, w13_weight_scale_2,
                                          w2_weight, w2_weight_scale, w2_weight_scale_2,
                                          w13_input_scale, w2_input_scale)),
           topk_ids.shape[1], activation, global_num_experts, expert_map_first, mode,
           activation_scale, swiglu_limit, max_tokens)
    layer = _LAYERS.get(key)
    if layer is None:
        layer = Nvfp4MoE(w13_weight, w13_weight_scale, w13_weight_scale_2, w2_weight,
                         w2_weight_scale, w2_weight_scale_2, top_k=topk_ids.shape[1],
                         max_tokens=max_tokens or hidden_states.shape[0],
                         w13_input_scale=w13_input_scale, w2_input_scale=w2_input_scale,
                         num_experts=global_num_experts, first_local_expert=expert_map_first,
                         mode=mode, activation=activation, swiglu_limit=swiglu_limit,
                         activation_scale=activation_scale)
        _LAYERS[key] = layer
    return layer(hidden_states, topk_weights, topk_ids)
