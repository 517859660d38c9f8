"""The engine-neutral half of the engine integrations (nvfp4moe.integration), with real tensors:
what the vLLM plugin runs, tested where vLLM cannot be installed (the GPU machine) as well as
here. The plugin's vLLM half is tested in real vLLM by tests/vllm.
"""
import pytest
import torch

import nvfp4moe
from nvfp4moe import integration
from test_torch import (CUDA, DEVICES, assert_close_bf16, dequantize, make_batch, make_experts,
                        needs_cuda, reference_moe, to)

WEIGHTS = ("w13_weight", "w13_weight_scale", "w13_weight_scale_2", "w2_weight", "w2_weight_scale",
           "w2_weight_scale_2")


def experts_of(t, first, count):
    return {k: v[first:first + count] for k, v in t.items()}


@pytest.mark.parametrize("device", DEVICES)
def test_expert_parallel_ranks_sum_to_the_whole_layer(device):
    """Two ranks with vLLM-style expert maps (global id -> local id or -1), here round-robin
    placement, which no contiguous range describes."""
    t = make_experts()
    x, w, ids = make_batch(11, 128, 8, 2)
    total = torch.zeros(11, 128, dtype=torch.float64)
    for rank in range(2):
        owned = list(range(rank, 8, 2))
        local = {k: torch.stack([v[e] for e in owned]).to(device) for k, v in t.items()}
        expert_map = torch.full((8,), -1, dtype=torch.int32)
        expert_map[owned] = torch.arange(4, dtype=torch.int32)
        layer = integration.MoeExperts("modelopt", *(local[n] for n in WEIGHTS), top_k=2,
                                       max_tokens=16)
        total += layer.apply(x.to(device), w.to(device), ids.to(device),
                             expert_map=expert_map.to(device)).cpu().double()
    # Each rank's output is rounded to bf16 once; the sum of two roundings is within a few ulps.
    torch.testing.assert_close(total.float(), reference_moe(t, x, w, ids).float(), rtol=2**-5,
                               atol=4e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_both_producers_scale_conventions_give_one_layer(device):
    t = to(make_experts(), device)
    x, w, ids = make_batch(9, 128, 8, 2, device=device)
    modelopt = integration.MoeExperts("modelopt", *(t[n] for n in WEIGHTS), top_k=2, max_tokens=9)
    reciprocal = dict(t, w13_weight_scale_2=1.0 / t["w13_weight_scale_2"],
                      w2_weight_scale_2=1.0 / t["w2_weight_scale_2"])
    compressed = integration.MoeExperts("compressed-tensors", *(reciprocal[n] for n in WEIGHTS),
                                        top_k=2, max_tokens=9)
    assert_close_bf16(compressed.apply(x, w, ids), modelopt.apply(x, w, ids))
    with pytest.raises(ValueError, match="unknown checkpoint format 'gguf'"):
        integration.MoeExperts("gguf", *(t[n] for n in WEIGHTS), top_k=2, max_tokens=9)


@pytest.mark.parametrize("device", DEVICES)
def test_router_weight_on_input(device):
    t = to(make_experts(), device)
    x, w, ids = make_batch(6, 128, 8, 1, device=device)
    w = w * 0.5  # not renormalized to 1: the weight must really scale the input
    layer = integration.MoeExperts("modelopt", *(t[n] for n in WEIGHTS), top_k=1, max_tokens=8)
    scaled = (x.float() * w.float()).to(torch.bfloat16)
    expected = layer.apply(scaled, torch.ones_like(w), ids)
    assert torch.equal(layer.apply(x, w, ids, apply_router_weight_on_input=True), expected)


def test_activations_are_mapped_or_refused_at_load():
    assert integration.moe_activation("silu") == ("silu", 10.0)
    assert integration.moe_activation("silu", swiglu_limit=7.0) == ("swiglu_clamped", 7.0)
    for bad, options in (("gelu", {}), ("swigluoai", {}), ("silu", {"swiglu_alpha": 1.702})):
        with pytest.raises(ValueError, match="is not supported"):
            integration.moe_activation(bad, **options)


@pytest.mark.parametrize("device", DEVICES)
def test_a_fused_qkv_with_three_global_scales(device):
    """q, k, v each quantized with its own global scale: each keeps it."""
    shards = [(64, 0.02), (32, 0.5), (32, 0.003)]
    values, scales, globals_, reference = [], [], [], []
    for rows, scale in shards:
        weight = (torch.randn(rows, 128) * scale).to(torch.bfloat16)
        v, s, g = nvfp4moe.quantize(weight)
        values.append(v)
        scales.append(s)
        globals_.append(g)
        reference.append(dequantize(v, s, g.item()))
    layer = integration.DenseLinear("modelopt", torch.cat(values).to(device),
                                    torch.cat(scales).to(device), torch.cat(globals_).to(device),
                                    [rows for rows, _ in shards], max_tokens=8)
    assert len(layer.parts) == 3
    x = torch.randn(2, 3, 128).to(torch.bfloat16)
    bias = torch.randn(128).to(torch.bfloat16)
    out = layer.apply(x.to(device), bias.to(device)).cpu()
    expected = (x.double() @ torch.cat(reference).T + bias.double()).to(torch.bfloat16)
    assert out.shape == (2, 3, 128)
    torch.testing.assert_close(out.float(), expected.float(), rtol=2**-6, atol=2e-2)
    # Shards sharing a scale share one prepared weight.
    same = integration.DenseLinear("modelopt", torch.cat(values).to(device),
                                   torch.cat(scales).to(device),
                                   torch.full((3,), 0.01, device=device), [64, 32, 32],
                                   max_tokens=8)
    assert len(same.parts) == 1


def test_exclusion_lists_of_both_producers():
    excluded = integration.module_excluded
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    assert excluded("lm_head", ["lm_head"])
    assert excluded("model.layers.3.self_attn.o_proj", ["model.layers.*.self_attn*"])
    assert excluded("model.layers.3.mlp.gate", ["re:.*mlp.gate$"])
    assert not excluded("model.layers.3.mlp.gate_up_proj", ["re:.*mlp.gate$"], packed)
    assert excluded("model.layers.0.self_attn.qkv_proj",
                    ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                     "model.layers.0.self_attn.v_proj"], packed)
    assert excluded("model.layers.0.self_attn.o_proj", ["model.layers.0.self_attn"])
    assert not excluded("model.layers.1.self_attn.o_proj", ["model.layers.0.self_attn"])
    with pytest.raises(ValueError, match="quantizes only some of them"):
        excluded("model.layers.0.self_attn.qkv_proj", ["model.layers.0.self_attn.q_proj"], packed)


@pytest.mark.parametrize("name, experts, hidden, inter", [
    ("deepseek-v3", 256, 7168, 2048), ("deepseek-v4-pro", 48, 7168, 3072),
    ("deepseek-v4-flash", 256, 4096, 2048), ("qwen3-235b", 128, 4096, 1536)])
def test_prepared_weights_are_no_larger_than_the_checkpoint_plus_two_percent(name, experts,
                                                                              hidden, inter):
    checkpoint = 3 * inter * hidden * (1 / 2 + 1 / 16)
    codes_13, scales_13 = nvfp4moe.prepared_bytes(2 * inter, hidden, "cuda")
    codes_2, scales_2 = nvfp4moe.prepared_bytes(hidden, inter, "cuda")
    assert codes_13 + scales_13 + codes_2 + scales_2 <= 1.02 * checkpoint, name


@needs_cuda
def test_a_captured_stack_of_layers_shares_one_workspace():
    """Four MoE layers and a dense projection, as an engine's decoder stack: one workspace on the
    device, the whole stack captured in one CUDA graph, replays with new inputs and routing."""
    nvfp4moe.workspace.reset()
    layers = []
    for seed in range(4):
        t = to(make_experts(seed=seed), "cuda")
        layers.append(integration.MoeExperts("modelopt", *(t[n] for n in WEIGHTS), top_k=2,
                                             max_tokens=64))
    v, s, g = nvfp4moe.quantize(torch.randn(128, 128).to(torch.bfloat16))
    projection = integration.DenseLinear("modelopt", v.cuda(), s.cuda(), g.cuda(), [128],
                                         max_tokens=64)
    reference = [integration.MoeExperts("modelopt", *(make_experts(seed=seed)[n] for n in WEIGHTS),
                                        top_k=2, max_tokens=64) for seed in range(4)]
    reference_projection = integration.DenseLinear("modelopt", v, s, g, [128], max_tokens=64)
    one = nvfp4moe.workspace.nbytes("cuda")

    def stack(layers, projection, x, w, ids):
        for layer in layers:
            x = projection.apply(layer.apply(x, w, ids))
        return x

    x, w, ids = make_batch(64, 128, 8, 2, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        stack(layers, projection, x, w, ids)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = stack(layers, projection, x, w, ids)
    assert nvfp4moe.workspace.nbytes("cuda") == one
    for replay in range(10):
        nx, nw, nids = make_batch(64, 128, 8, 2, seed=50 + replay)
        x.copy_(nx)
        w.copy_(nw)
        ids.copy_(nids)
        graph.replay()
        expected = stack(reference, reference_projection, nx, nw, nids)
        torch.testing.assert_close(out.cpu().float(), expected.float(), rtol=2**-4, atol=2e-2)
