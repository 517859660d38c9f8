"""nvfp4moe as a vLLM plugin: the one file of nvfp4moe that imports vLLM.

Written against vLLM 0.32.0 (model_executor/layers/fused_moe/routed_experts.py,
fused_moe_method_base.py, quantization/base_config.py, modelopt.py, linear.py); on a vLLM
upgrade, re-read those and change this file only. The work itself is engine-neutral and lives in
nvfp4moe.integration.

    vllm serve MODEL --quantization nvfp4moe        # or LLM(MODEL, quantization="nvfp4moe")

registers, through the `vllm.general_plugins` entry point that `pip install .` installs:
  - a quantization config "nvfp4moe" for NVFP4 checkpoints of ModelOpt (hf_quant_config.json or
    config.json quant_method "modelopt") and of compressed-tensors (nvfp4-pack-quantized);
  - an MoE method for vLLM's RoutedExperts: the parameters vLLM's loader fills, prepared into
    nvfp4moe's layout after loading (the originals freed), and nvfp4moe's forward on vLLM's
    top-k routing, with its expert map (expert parallelism), activation (silu, DeepSeek-V4's
    clamped SwiGLU) and router-weight-on-input option;
  - a linear method for the dense NVFP4 layers (attention projections, shared experts);
  - one workspace per device for all layers, sized from vLLM's max batched tokens.
On a Hopper GPU (compute capability 9.0) it also claims NVFP4 checkpoints when no quantization is
given (NVFP4MOE_VLLM_CLAIM=0 turns that off; vLLM's own NVFP4 path then serves them).
"""
import json
import logging
import os

import torch
from vllm.model_executor.layers.fused_moe import RoutedExperts
from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
from vllm.model_executor.layers.fused_moe.routed_experts import FusedMoeWeightScaleSupported
from vllm.model_executor.layers.linear import (LinearBase, LinearMethodBase,
                                               UnquantizedLinearMethod,
                                               register_weight_loader_v2_supported_method)
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.parameter import (GroupQuantScaleParameter, ModelWeightParameter,
                                           PerTensorScaleParameter)
from vllm.model_executor.utils import set_weight_attrs
from vllm.platforms import current_platform

from . import integration

logger = logging.getLogger("nvfp4moe.vllm")

NAME = "nvfp4moe"
VLLM_VERSION = "0.32.0"


def _serving_device_problem():
    """Why this platform cannot run nvfp4moe, or None."""
    if current_platform.is_cpu():
        return None
    if current_platform.is_cuda():
        capability = current_platform.get_device_capability()
        if capability is not None and (capability.major, capability.minor) == (9, 0):
            return None
        return (f"nvfp4moe's kernels need a Hopper GPU (compute capability 9.0), this one has "
                f"{capability}")
    return f"nvfp4moe does not run on vLLM's {current_platform.device_name} platform"


def _max_tokens(moe_config=None):
    """The most tokens one forward carries: vLLM's max batched tokens (times the data-parallel
    ranks whose tokens an expert-parallel layer gathers)."""
    from vllm.config import get_current_vllm_config
    config = get_current_vllm_config()
    tokens = config.scheduler_config.max_num_batched_tokens or 8192
    parallel = getattr(moe_config, "moe_parallel_config", None)
    return int(tokens) * max(1, int(getattr(parallel, "dp_size", 1) or 1))


def _checkpoint_format(hf_quant_cfg, strict=True):
    """'modelopt', 'compressed-tensors' or 'other' for a quantization config dict. A config of
    either producer that describes anything but NVFP4 raises (the library checks it, naming the
    field) when strict, and is 'other' otherwise."""
    if not isinstance(hf_quant_cfg, dict):
        return "other"
    try:
        return torch.ops.nvfp4moe.quantization_format(json.dumps(hf_quant_cfg, default=str),
                                                      "quantization_config")
    except ValueError:
        if strict:
            raise
        return "other"


class Nvfp4MoeConfig(QuantizationConfig):
    """NVFP4 checkpoints (ModelOpt or compressed-tensors) served by nvfp4moe's kernels."""

    def __init__(self, format, excluded, group_size=16):
        super().__init__()
        if group_size != 16:
            raise ValueError(f"nvfp4moe: group_size {group_size}, NVFP4 has 16")
        self.format = format
        self.excluded = list(excluded)

    def get_name(self):
        return NAME

    def get_supported_act_dtypes(self):
        return [torch.bfloat16, torch.float16]

    @classmethod
    def get_min_capability(cls):
        return 90

    @staticmethod
    def get_config_filenames():
        return ["hf_quant_config.json"]

    @classmethod
    def from_config(cls, config):
        format = _checkpoint_format(config)
        if format == integration.MODELOPT:
            body = config.get("quantization", config)
            excluded = body.get("exclude_modules", body.get("ignore", [])) or []
            return cls(format, excluded, int(body.get("group_size") or 16))
        if format == integration.COMPRESSED_TENSORS:
            return cls(format, config.get("ignore", []) or [])
        raise ValueError(f"nvfp4moe: quantization config with quant_method "
                         f"{config.get('quant_method')!r} is not an NVFP4 checkpoint "
                         "(expected ModelOpt NVFP4 or compressed-tensors nvfp4-pack-quantized)")

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant, hf_config=None):
        if user_quant not in (None, NAME):
            return None
        format = _checkpoint_format(hf_quant_cfg, strict=user_quant == NAME)
        nvfp4 = format in (integration.MODELOPT, integration.COMPRESSED_TENSORS)
        if user_quant == NAME:
            if not nvfp4:
                raise ValueError(
                    f"nvfp4moe: quantization='{NAME}' serves NVFP4 checkpoints (ModelOpt or "
                    "compressed-tensors), but this one declares quant_method "
                    f"{hf_quant_cfg.get('quant_method')!r}")
            return NAME
        claim = os.environ.get("NVFP4MOE_VLLM_CLAIM", "auto").lower()
        if nvfp4 and claim not in ("0", "off", "false", "no") and current_platform.is_cuda() \
                and _serving_device_problem() is None:
            logger.info("nvfp4moe serves this NVFP4 checkpoint (NVFP4MOE_VLLM_CLAIM=0 to leave "
                        "it to vLLM)")
            return NAME
        return None

    def apply_vllm_mapper(self, hf_to_vllm_mapper):
        self.excluded = hf_to_vllm_mapper.apply_list(self.excluded)

    def get_quant_method(self, layer, prefix):
        if isinstance(layer, RoutedExperts):
            return Nvfp4MoeModelOptMethod(self, layer.moe_config) \
                if self.format == integration.MODELOPT else \
                Nvfp4MoeCompressedTensorsMethod(self, layer.moe_config)
        if isinstance(layer, LinearBase):
            if integration.module_excluded(prefix, self.excluded, self.packed_modules_mapping):
                return UnquantizedLinearMethod()
            return Nvfp4LinearMethod(self)
        return None


# ---- MoE -------------------------------------------------------------------------------------------

class _Nvfp4MoeMethod(FusedMoEMethodBase):
    """What both producers' MoE methods share; subclasses name the parameters."""

    # Parameter names: values, block scales, global scales, input scales.
    VALUES = SCALES = GLOBALS = INPUTS = None

    def __init__(self, quant_config, moe):
        super().__init__(moe)
        self.quant_config = quant_config
        problem = _serving_device_problem()
        if problem is not None:
            raise ValueError(problem)
        if not moe.is_act_and_mul:
            raise ValueError("nvfp4moe: MoE layers without a gated activation are not supported")
        self.activation, self.swiglu_limit = integration.moe_activation(
            moe.activation, getattr(moe, "swiglu_limit", None),
            getattr(moe, "swiglu_alpha", None), getattr(moe, "swiglu_beta", None))
        self.experts = None

    def uses_weight_scale_2_pattern(self):
        return True

    def create_weights(self, layer, num_experts, hidden_size, intermediate_size_per_partition,
                       params_dtype, **extra_weight_attrs):
        inter, experts = intermediate_size_per_partition, num_experts

        def add(name, shape, dtype, kind=None):
            parameter = torch.nn.Parameter(torch.empty(*shape, dtype=dtype),
                                           requires_grad=False)
            layer.register_parameter(name, parameter)
            attrs = dict(extra_weight_attrs)
            if kind is not None:
                attrs["quant_method"] = kind.value
            set_weight_attrs(parameter, attrs)

        block = FusedMoeWeightScaleSupported.BLOCK if self.VALUES == "weight" else \
            FusedMoeWeightScaleSupported.GROUP
        tensor = FusedMoeWeightScaleSupported.TENSOR
        add(f"w13_{self.VALUES}", (experts, 2 * inter, hidden_size // 2), torch.uint8)
        add(f"w2_{self.VALUES}", (experts, hidden_size, inter // 2), torch.uint8)
        add(f"w13_{self.SCALES}", (experts, 2 * inter, hidden_size // 16), torch.float8_e4m3fn,
            block)
        add(f"w2_{self.SCALES}", (experts, hidden_size, inter // 16), torch.float8_e4m3fn, block)
        add(f"w13_{self.GLOBALS}", (experts, 2), torch.float32, tensor)
        add(f"w2_{self.GLOBALS}", (experts,), torch.float32, tensor)
        # Static activation scales (read for W4A4 only; nvfp4moe computes W4A16 by default).
        add(f"w13_{self.INPUTS}", (experts, 2), torch.float32, tensor)
        add(f"w2_{self.INPUTS}", (experts,), torch.float32, tensor)
        for name in (f"w13_{self.INPUTS}", f"w2_{self.INPUTS}"):
            getattr(layer, name).data.fill_(float("nan"))  # "never loaded" until loaded

    def process_weights_after_loading(self, layer):
        names = [f"w13_{self.VALUES}", f"w13_{self.SCALES}", f"w13_{self.GLOBALS}",
                 f"w2_{self.VALUES}", f"w2_{self.SCALES}", f"w2_{self.GLOBALS}"]
        tensors = [getattr(layer, name).data for name in names]
        inputs = [getattr(layer, f"w13_{self.INPUTS}").data,
                  getattr(layer, f"w2_{self.INPUTS}").data]
        has_inputs = not any(torch.isnan(t).any().item() for t in inputs)
        mode = os.environ.get("NVFP4MOE_VLLM_MODE", "w4a16")
        self.experts = integration.MoeExperts(
            self.quant_config.format, *tensors, top_k=self.moe.experts_per_token,
            max_tokens=_max_tokens(self.moe), activation=self.activation,
            swiglu_limit=self.swiglu_limit,
            w13_input_scale=inputs[0] if has_inputs else None,
            w2_input_scale=inputs[1] if has_inputs else None, mode=mode,
            activation_scale="static" if mode == "w4a4" and has_inputs else "dynamic")
        # The prepared weights replace the checkpoint's: only they stay in memory.
        for name in names + [f"w13_{self.INPUTS}", f"w2_{self.INPUTS}"]:
            delattr(layer, name)
        layer.nvfp4moe_experts = self.experts.module

    def get_fused_moe_quant_config(self, layer):
        return None

    def apply(self, layer, x, topk_weights, topk_ids, shared_experts, shared_experts_input):
        return self.experts.apply(x, topk_weights, topk_ids, expert_map=layer.expert_map,
                                  apply_router_weight_on_input=layer.apply_router_weight_on_input)


class Nvfp4MoeModelOptMethod(_Nvfp4MoeMethod):
    """ModelOpt NVFP4 experts. vLLM's loader fills ModelOpt-style per-expert scales only for
    methods whose class name contains "ModelOpt" and that use the weight_scale_2 pattern."""

    VALUES, SCALES, GLOBALS, INPUTS = "weight", "weight_scale", "weight_scale_2", "input_scale"


class Nvfp4MoeCompressedTensorsMethod(_Nvfp4MoeMethod):
    """compressed-tensors NVFP4 experts (reciprocal global scales)."""

    VALUES, SCALES, GLOBALS, INPUTS = ("weight_packed", "weight_scale", "weight_global_scale",
                                       "input_global_scale")

    def uses_weight_scale_2_pattern(self):
        return False


# ---- dense linear layers ----------------------------------------------------------------------------

@register_weight_loader_v2_supported_method  # its parameters load through vLLM's parameter classes
class Nvfp4LinearMethod(LinearMethodBase):
    """Dense NVFP4 layers (attention projections, shared experts): vLLM's NVFP4 parameters,
    prepared per run of fused shards that share a global scale."""

    def __init__(self, quant_config):
        self.quant_config = quant_config
        problem = _serving_device_problem()
        if problem is not None:
            raise ValueError(problem)
        modelopt = quant_config.format == integration.MODELOPT
        self.names = (("weight", "weight_scale", "weight_scale_2", "input_scale") if modelopt
                      else ("weight_packed", "weight_scale", "weight_global_scale",
                            "input_global_scale"))

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, **extra_weight_attrs):
        if input_size_per_partition % 16:
            raise ValueError(f"nvfp4moe: input size {input_size_per_partition} is not a "
                             "multiple of 16")
        loader = extra_weight_attrs.get("weight_loader")
        rows = sum(output_partition_sizes)
        values, scales, globals_, inputs = self.names
        layer.logical_widths = list(output_partition_sizes)
        layer.register_parameter(values, ModelWeightParameter(
            data=torch.empty(rows, input_size_per_partition // 2, dtype=torch.uint8),
            input_dim=1, output_dim=0, weight_loader=loader))
        layer.register_parameter(scales, GroupQuantScaleParameter(
            data=torch.full((rows, input_size_per_partition // 16), float("nan"),
                            dtype=torch.float32).to(torch.float8_e4m3fn),
            input_dim=1, output_dim=0, weight_loader=loader))
        for name in (globals_, inputs):
            layer.register_parameter(name, PerTensorScaleParameter(
                data=torch.full((len(output_partition_sizes),), float("nan"),
                                dtype=torch.float32), weight_loader=loader))

    def process_weights_after_loading(self, layer):
        values, scales, globals_, inputs = self.names
        if torch.isnan(getattr(layer, scales).data.float()).any():
            raise RuntimeError(
                f"nvfp4moe: the NVFP4 weight scales of {getattr(layer, 'prefix', 'a layer')} were "
                "never loaded: the checkpoint stores that layer unquantized; list it in the "
                "quantization config's exclusions")
        input_scales = getattr(layer, inputs).data
        self.linear = integration.DenseLinear(
            self.quant_config.format, getattr(layer, values).data, getattr(layer, scales).data,
            getattr(layer, globals_).data, layer.logical_widths, max_tokens=_max_tokens(),
            input_scales=None if torch.isnan(input_scales).any() else input_scales)
        for name in self.names:
            delattr(layer, name)
        layer.nvfp4moe_parts = torch.nn.ModuleList(self.linear.parts)

    def apply(self, layer, x, bias=None):
        return self.linear.apply(x, bias)


def register():
    """The `vllm.general_plugins` entry point, which vLLM calls in every process: registers the
    "nvfp4moe" quantization config once per process."""
    from vllm.model_executor.layers.quantization import (QUANTIZATION_METHODS,
                                                         get_quantization_config)
    if NAME in QUANTIZATION_METHODS and get_quantization_config(NAME) is Nvfp4MoeConfig:
        return
    register_quantization_config(NAME)(Nvfp4MoeConfig)
