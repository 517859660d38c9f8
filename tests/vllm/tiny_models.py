"""Tiny Qwen3-MoE checkpoints for the vLLM tests: a BF16 model whose expert weights quantize to
NVFP4 with power-of-two global scales, so the dequantized NVFP4 weights are exact in BF16 and a
BF16 "twin" computes exactly what the NVFP4 model stands for.

    make_bf16(dir)                      random weights, one planted amax per gate/up pair and down
    make_twin(nvfp4_dir, bf16_dir, out) the BF16 model with the NVFP4 checkpoint's dequantized
                                        experts (and attention projections, when quantized)
    quantize_attention(nvfp4_dir)       q/k/v/o projections to ModelOpt NVFP4 as well, each with
                                        its own power-of-two global scale
"""
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

HIDDEN, INTER, EXPERTS, TOP_K, LAYERS, VOCAB = 256, 128, 8, 2, 2, 512
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 64
# Every expert matrix (gate and up together) has amax 2688 * 2^-12: its global scale is 2^-12.
AMAX = 2688.0 * 2.0 ** -12
E2M1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6],
                    dtype=torch.float64)

CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "hidden_size": HIDDEN,
    "intermediate_size": 512,
    "moe_intermediate_size": INTER,
    "num_experts": EXPERTS,
    "num_experts_per_tok": TOP_K,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "vocab_size": VOCAB,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "attention_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _planted(rows, cols, generator, scale):
    """Gaussian weights of |w| < AMAX with one element exactly AMAX (the matrix's amax)."""
    w = (torch.randn(rows, cols, generator=generator) * scale).clamp(-0.9 * AMAX, 0.9 * AMAX)
    w[int(torch.randint(rows, (1,), generator=generator))][
        int(torch.randint(cols, (1,), generator=generator))] = AMAX
    return w.to(torch.bfloat16)


def make_bf16(directory, seed=0):
    """The BF16 model. Experts are strong (std 0.05 against 0.02 elsewhere), so the MoE moves
    the greedy tokens."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "model.embed_tokens.weight": (torch.randn(VOCAB, HIDDEN, generator=g)).to(torch.bfloat16),
        "lm_head.weight": (torch.randn(VOCAB, HIDDEN, generator=g) * 0.05).to(torch.bfloat16),
        "model.norm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
    }
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        for name, rows, cols in (("q_proj", HEADS * HEAD_DIM, HIDDEN),
                                 ("k_proj", KV_HEADS * HEAD_DIM, HIDDEN),
                                 ("v_proj", KV_HEADS * HEAD_DIM, HIDDEN),
                                 ("o_proj", HIDDEN, HEADS * HEAD_DIM)):
            tensors[f"{p}self_attn.{name}.weight"] = _planted(rows, cols, g, 0.02)
        tensors[f"{p}self_attn.q_norm.weight"] = torch.ones(HEAD_DIM, dtype=torch.bfloat16)
        tensors[f"{p}self_attn.k_norm.weight"] = torch.ones(HEAD_DIM, dtype=torch.bfloat16)
        tensors[f"{p}input_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
        tensors[f"{p}post_attention_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
        tensors[f"{p}mlp.gate.weight"] = (torch.randn(EXPERTS, HIDDEN, generator=g) * 0.1).to(
            torch.bfloat16)
        for e in range(EXPERTS):
            gate = _planted(INTER, HIDDEN, g, 0.05)
            up = (torch.randn(INTER, HIDDEN, generator=g) * 0.05).clamp(-0.9 * AMAX, 0.9 * AMAX)
            tensors[f"{p}mlp.experts.{e}.gate_proj.weight"] = gate
            tensors[f"{p}mlp.experts.{e}.up_proj.weight"] = up.to(torch.bfloat16)
            tensors[f"{p}mlp.experts.{e}.down_proj.weight"] = _planted(HIDDEN, INTER, g, 0.05)
    os.makedirs(directory, exist_ok=True)
    half = len(tensors) // 2
    names = sorted(tensors)
    weight_map = {}
    for index, chunk in enumerate((names[:half], names[half:])):
        shard = f"model-{index + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n].contiguous() for n in chunk}, os.path.join(directory, shard),
                  metadata={"format": "pt"})
        weight_map.update({n: shard for n in chunk})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=1)
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2}, f)
    return directory


def _load(directory):
    tensors = {}
    for name in os.listdir(directory):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(directory, name)))
    return tensors


def dequantize(weight, scale, global_scale):
    """ModelOpt NVFP4 -> float64, exactly."""
    codes = torch.stack([weight & 15, weight >> 4], dim=-1).flatten(-2).long()
    blocks = scale.view(torch.float8_e4m3fn).double().repeat_interleave(16, dim=-1)
    return E2M1[codes] * blocks * float(global_scale)


def quantize_attention(directory):
    """Rewrites a ModelOpt NVFP4 checkpoint (our quantize's output) with its attention
    projections in NVFP4 too: q, k, v and o with global scales 2^-12, 2^-11, 2^-13, 2^-12, so
    the fused qkv carries three different scales. Drops them from the exclusion lists."""
    import nvfp4moe
    scales = {"q_proj": 2.0 ** -12, "k_proj": 2.0 ** -11, "v_proj": 2.0 ** -13,
              "o_proj": 2.0 ** -12}
    index_path = os.path.join(directory, "model.safetensors.index.json")
    index = json.load(open(index_path))
    for shard in sorted(set(index["weight_map"].values())):
        path = os.path.join(directory, shard)
        tensors = load_file(path)
        for name in [n for n in tensors if ".self_attn." in n and n.endswith("_proj.weight")]:
            projection = name.split(".")[-2]
            # Scale to amax 2688 * g, so g is the quantizer's dynamic scale exactly.
            w = tensors.pop(name).float()
            w = w * (2688.0 * scales[projection] / w.abs().max())
            values, block, g = nvfp4moe.quantize(w.to(torch.bfloat16).float(),
                                                 scales[projection])
            base = name[: -len(".weight")]
            tensors[base + ".weight"] = values
            tensors[base + ".weight_scale"] = block
            tensors[base + ".weight_scale_2"] = torch.tensor(scales[projection])
            for suffix in (".weight", ".weight_scale", ".weight_scale_2"):
                index["weight_map"][base + suffix] = shard
        save_file(tensors, path, metadata={"format": "pt"})
    with open(index_path, "w") as f:
        json.dump(index, f)
    for file_name in ("config.json", "hf_quant_config.json"):
        path = os.path.join(directory, file_name)
        config = json.load(open(path))
        body = config.get("quantization_config", config.get("quantization"))
        for key in ("ignore", "exclude_modules"):
            if key in body:
                body[key] = [m for m in body[key] if ".self_attn." not in m]
        with open(path, "w") as f:
            json.dump(config, f, indent=1)


def make_twin(nvfp4_directory, bf16_directory, out):
    """The BF16 model whose quantized weights are the NVFP4 checkpoint's, dequantized (exact:
    each is e2m1 * e4m3 * 2^k, at most 5 significant bits)."""
    nvfp4 = _load(nvfp4_directory)
    tensors = _load(bf16_directory)
    for name in list(tensors):
        base = name[: -len(".weight")]
        if base + ".weight_scale_2" in nvfp4:
            exact = dequantize(nvfp4[base + ".weight"], nvfp4[base + ".weight_scale"],
                               nvfp4[base + ".weight_scale_2"])
            twin = exact.to(torch.bfloat16)
            assert torch.equal(twin.double(), exact), f"{name} is not exact in bf16"
            tensors[name] = twin
    shutil.copytree(bf16_directory, out, ignore=shutil.ignore_patterns("*.safetensors"))
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    for shard in set(index["weight_map"].values()):
        save_file({n: tensors[n].contiguous() for n, s in index["weight_map"].items() if s == shard},
                  os.path.join(out, shard), metadata={"format": "pt"})
    return out


def zero_experts(directory, out):
    """A copy of a BF16 model with every expert weight zero: the MoE contributes nothing."""
    shutil.copytree(directory, out)
    for name in os.listdir(out):
        if name.endswith(".safetensors"):
            tensors = load_file(os.path.join(out, name))
            tensors = {k: (torch.zeros_like(v) if ".experts." in k else v)
                       for k, v in tensors.items()}
            save_file(tensors, os.path.join(out, name), metadata={"format": "pt"})
    return out
