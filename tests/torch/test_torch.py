"""The PyTorch layer: opcheck on every op, torch.compile(fullgraph=True), CUDA-graph replays,
CPU and CUDA against each other and against a float64 reference, and the exceptions users see.

CPU tests run everywhere torch is installed (CI); CUDA tests skip without an sm_90 GPU.
"""
import os

import pytest
import torch

import nvfp4moe

CUDA = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs an sm_90 GPU (run on the GPU machine)")
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
E2M1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6],
                    dtype=torch.float64)


def make_experts(experts=8, hidden=128, intermediate=64, seed=0):
    """ModelOpt-style NVFP4 expert tensors quantized from Gaussian bf16 weights."""
    g = torch.Generator().manual_seed(seed)

    def quantized(rows, cols):
        values, scales, globals_ = [], [], []
        for _ in range(experts):
            w = (torch.randn(rows, cols, generator=g) / cols**0.5).to(torch.bfloat16)
            v, s, gs = nvfp4moe.quantize(w)
            values.append(v)
            scales.append(s)
            globals_.append(gs)
        return torch.stack(values), torch.stack(scales), torch.cat(globals_)

    gate_v, gate_s, gate_g = quantized(intermediate, hidden)
    up_v, up_s, up_g = quantized(intermediate, hidden)
    down_v, down_s, down_g = quantized(hidden, intermediate)
    return {
        "w13_weight": torch.cat([gate_v, up_v], dim=1),
        "w13_weight_scale": torch.cat([gate_s, up_s], dim=1),
        "w13_weight_scale_2": torch.stack([gate_g, up_g], dim=1),
        "w2_weight": down_v,
        "w2_weight_scale": down_s,
        "w2_weight_scale_2": down_g,
    }


def make_batch(tokens, hidden, experts, top_k, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(torch.bfloat16)
    logits = torch.randn(tokens, experts, generator=g)
    weights, ids = torch.softmax(logits, -1).topk(top_k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    return x.to(device), weights.to(device), ids.to(torch.int32).to(device)


def to(tensors, device):
    return {k: v.to(device) for k, v in tensors.items()}


def dequantize(values, scales, global_scale):
    codes = torch.stack([values & 15, values >> 4], dim=-1).flatten(-2).long()
    s = scales.view(torch.float8_e4m3fn).to(torch.float64).repeat_interleave(16, dim=-1)
    return E2M1[codes] * s * global_scale


def reference_moe(t, x, weights, ids):
    """W4A16 in float64 from the dequantized weights: h rounded to bf16, the output once."""
    experts = t["w13_weight"].shape[0]
    inter = t["w13_weight"].shape[1] // 2
    out = torch.zeros(x.shape, dtype=torch.float64)
    xd = x.to(torch.float64)
    for e in range(experts):
        w13 = dequantize(t["w13_weight"][e], t["w13_weight_scale"][e], 1.0)
        gate = w13[:inter] * t["w13_weight_scale_2"][e, 0].item()
        up = w13[inter:] * t["w13_weight_scale_2"][e, 1].item()
        down = dequantize(t["w2_weight"][e], t["w2_weight_scale"][e],
                          t["w2_weight_scale_2"][e].item())
        rows, slots = (ids == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        a = xd[rows]
        g_, u = a @ gate.T, a @ up.T
        h = (torch.nn.functional.silu(g_) * u).to(torch.bfloat16).to(torch.float64)
        out.index_add_(0, rows, weights[rows, slots].to(torch.float64)[:, None] * (h @ down.T))
    return out.to(torch.bfloat16)


def assert_close_bf16(actual, expected):
    """Within a couple of bf16 ulps: different fp32 summation orders may flip roundings."""
    torch.testing.assert_close(actual.float(), expected.float(), rtol=2**-6, atol=2e-3)


# ---- ops -------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    t = to(make_experts(), device)
    x, w, ids = make_batch(5, 128, 8, 2, device=device)
    xf = torch.randn(6, 64, device=device)
    ops = torch.ops.nvfp4moe
    torch.library.opcheck(ops.quantize.default, (
        xf, None, torch.empty(6, 32, dtype=torch.uint8, device=device),
        torch.empty(6, 4, dtype=torch.uint8, device=device),
        torch.empty(1, device=device)))
    codes_bytes, scale_bytes = nvfp4moe.prepared_bytes(128, 128, device)
    # (scales as uint8: opcheck's schema check compares tensors with ops float8 lacks)
    torch.library.opcheck(ops.prepare_weights.default, (
        t["w13_weight"], t["w13_weight_scale"].view(torch.uint8), True,
        torch.empty(8 * codes_bytes, dtype=torch.uint8, device=device),
        torch.empty(8 * scale_bytes, dtype=torch.uint8, device=device)))
    moe = nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=8)
    workspace = nvfp4moe.workspace.get(device, moe._workspace_nbytes)
    torch.library.opcheck(ops.moe_forward.default, (
        x, ids, w, moe.w13_codes, moe.w13_scale_codes, moe.w13_global_scale, moe.w2_codes,
        moe.w2_scale_codes, moe.w2_global_scale, None, None, 8, 0, 128, 64, 2, 8, "w4a16",
        "dynamic", "silu", 10.0, workspace, moe.errors, torch.empty_like(x)))
    v, s, g = nvfp4moe.quantize(torch.randn(96, 128).to(torch.bfloat16))
    linear = nvfp4moe.Nvfp4Linear(v.to(device), s.to(device), g.to(device), max_tokens=8)
    torch.library.opcheck(ops.linear.default, (
        x, linear.codes, linear.scale_codes, linear.global_scale, None, 96, 8, "w4a16", "dynamic",
        workspace, linear.errors, torch.empty(5, 96, dtype=torch.bfloat16, device=device)))
    fused_args = (x, t["w13_weight"], t["w13_weight_scale"].view(torch.uint8),
                  t["w13_weight_scale_2"], t["w2_weight"], t["w2_weight_scale"].view(torch.uint8),
                  t["w2_weight_scale_2"], w, ids, None,
                  None, "silu", -1, 0, "w4a16", "dynamic", 10.0, 8)
    torch.library.opcheck(ops.fused_experts.default, fused_args,
                          test_utils=("test_schema", "test_faketensor"))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("global_scale", [None, 0.01])
def test_quantize_is_bit_identical_on_cpu_and_cuda(dtype, global_scale):
    x = (torch.randn(33, 7168) * 3).to(dtype)
    x[0, :16] = 0
    x[1, :16] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 6] * 2) * 0.5
    cpu = nvfp4moe.quantize(x, global_scale)
    gpu = nvfp4moe.quantize(x.cuda(), global_scale)
    assert torch.equal(cpu[0], gpu[0].cpu())
    assert torch.equal(cpu[1].view(torch.uint8), gpu[1].cpu().view(torch.uint8))
    assert torch.equal(cpu[2], gpu[2].cpu())


# ---- the module --------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_module_matches_a_float64_reference(device):
    t = make_experts()
    x, w, ids = make_batch(19, 128, 8, 3)
    moe = nvfp4moe.Nvfp4MoE(**to(t, device), top_k=3, max_tokens=32)
    out = moe(x.to(device), w.to(device), ids.to(device)).cpu()
    assert_close_bf16(out, reference_moe(t, x, w, ids))


def test_w4a8_is_near_the_exact_mode_on_the_cpu():
    """The approximate FP8 mode (numerics §5) runs through the op: its output differs from the
    exact W4A16 output, and by far less than W4A4's does."""
    t = make_experts(experts=8, hidden=256, intermediate=128)
    x, w, ids = make_batch(24, 256, 8, 2)
    out = {mode: nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=24, mode=mode)(x, w, ids).float()
           for mode in ("w4a16", "w4a4", "w4a8")}

    def distance(mode):
        return ((out[mode] - out["w4a16"]).norm() / out["w4a16"].norm()).item()
    assert 0 < distance("w4a8") < 0.5 * distance("w4a4")
    if torch.cuda.is_available():
        moe = nvfp4moe.Nvfp4MoE(**to(t, "cuda"), top_k=2, max_tokens=24, mode="w4a8")
        with pytest.raises(Exception, match="W4A8 runs on the CPU reference only"):
            moe(x.cuda(), w.cuda(), ids.cuda())


@needs_cuda
@pytest.mark.parametrize("mode", ["w4a16", "w4a4"])
@pytest.mark.parametrize("activation", ["silu", "swiglu_clamped"])
def test_cuda_equals_the_cpu_runner(mode, activation):
    t = make_experts(experts=16, hidden=256, intermediate=128)
    x, w, ids = make_batch(200, 256, 16, 4)
    options = dict(top_k=4, max_tokens=256, mode=mode, activation=activation, swiglu_limit=1.0)
    cpu = nvfp4moe.Nvfp4MoE(**t, **options)(x, w, ids)
    gpu = nvfp4moe.Nvfp4MoE(**to(t, "cuda"), **options)(x.cuda(), w.cuda(), ids.cuda()).cpu()
    assert_close_bf16(gpu, cpu)
    cosine = torch.nn.functional.cosine_similarity(gpu.float().flatten(), cpu.float().flatten(),
                                                   dim=0)
    assert cosine > 0.9999


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_equals_eager(device):
    t = to(make_experts(), device)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.router = torch.nn.Linear(128, 8, bias=False, dtype=torch.bfloat16)
            self.moe = nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=16)

        def forward(self, x):
            weights, ids = torch.softmax(self.router(x).float(), -1).topk(2, dim=-1)
            return x + self.moe(x, weights, ids.to(torch.int32))

    block = Block().to(device)
    x = torch.randn(16, 128, dtype=torch.bfloat16, device=device)
    eager = block(x)
    compiled = torch.compile(block, fullgraph=True)(x)
    assert_close_bf16(compiled, eager)
    if device == "cpu":
        assert torch.equal(compiled, eager)  # the CPU op is deterministic


@needs_cuda
@pytest.mark.parametrize("mode", ["w4a16", "w4a4"])
def test_cuda_graph_100_replays_with_changing_routing(mode):
    t = make_experts()
    moe = nvfp4moe.Nvfp4MoE(**to(t, "cuda"), top_k=2, max_tokens=16, mode=mode)
    reference = nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=16, mode=mode)
    x, w, ids = make_batch(16, 128, 8, 2, seed=0, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        moe(x, w, ids)  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = moe(x, w, ids)
    for replay in range(100):
        nx, nw, nids = make_batch(16, 128, 8, 2, seed=100 + replay)
        x.copy_(nx)
        w.copy_(nw)
        ids.copy_(nids)
        graph.replay()
        assert_close_bf16(out.cpu(), reference(nx, nw, nids))
    moe.check_errors()


@pytest.mark.parametrize("device", DEVICES)
def test_fused_experts_is_a_one_line_swap(device):
    t = to(make_experts(), device)
    x, w, ids = make_batch(9, 128, 8, 2, device=device)
    first = nvfp4moe.fused_experts(x, t["w13_weight"], t["w13_weight_scale"],
                                   t["w13_weight_scale_2"], t["w2_weight"], t["w2_weight_scale"],
                                   t["w2_weight_scale_2"], w, ids.to(torch.int64), max_tokens=16)
    module = nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=16)
    assert_close_bf16(first, module(x, w, ids))
    layers = len(nvfp4moe.module._LAYERS.layers)
    nvfp4moe.fused_experts(x, t["w13_weight"], t["w13_weight_scale"], t["w13_weight_scale_2"],
                           t["w2_weight"], t["w2_weight_scale"], t["w2_weight_scale_2"], w, ids,
                           max_tokens=16)
    assert len(nvfp4moe.module._LAYERS.layers) == layers  # the prepared weights were reused


@pytest.mark.parametrize("device", DEVICES)
def test_linear_matches_float64(device):
    w = (torch.randn(96, 128) / 128**0.5).to(torch.bfloat16)
    v, s, g = nvfp4moe.quantize(w)
    layer = nvfp4moe.Nvfp4Linear(v.to(device), s.to(device), g.to(device), max_tokens=8)
    x = torch.randn(7, 128).to(torch.bfloat16)
    out = layer(x.to(device)).cpu()
    expected = (x.double() @ dequantize(v, s, g.item()).T).to(torch.bfloat16)
    assert_close_bf16(out, expected)


def test_from_checkpoint_reads_a_modelopt_layer():
    fixtures = os.environ.get("NVFP4MOE_FIXTURES")
    if not fixtures:
        pytest.skip("NVFP4MOE_FIXTURES is not set (ctest sets it)")
    path = os.path.join(fixtures, "modelopt_hf")
    moe = nvfp4moe.Nvfp4MoE.from_checkpoint(path, 3, top_k=2, max_tokens=8, device="cpu")
    assert (moe.local_experts, moe.hidden, moe.intermediate) == (4, 64, 32)
    x, w, ids = make_batch(8, 64, 4, 2)
    assert torch.isfinite(moe(x, w, ids).float()).all()
    with pytest.raises(ValueError, match="no MoE layer 2"):
        nvfp4moe.Nvfp4MoE.from_checkpoint(path, 2, top_k=2, max_tokens=8, device="cpu")


# ---- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_raise_clear_exceptions(device):
    t = to(make_experts(), device)
    moe = nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=8)
    x, w, ids = make_batch(4, 128, 8, 2, device=device)
    with pytest.raises(ValueError, match=r"hidden_states has shape .*expected \[T, 128\]"):
        moe(torch.zeros(4, 64, dtype=torch.bfloat16, device=device), w, ids)
    with pytest.raises(TypeError, match="hidden_states must be BFloat16"):
        moe(x.float(), w, ids)
    with pytest.raises(ValueError, match="topk_ids has shape"):
        moe(x, w, ids[:, :1].contiguous())
    with pytest.raises(ValueError, match="at most 8"):
        moe(*make_batch(9, 128, 8, 2, device=device))
    with pytest.raises(ValueError,
                       match=r"mode = 'w8a8', expected one of \['w4a16', 'w4a4', 'w4a8'\]"):
        nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=8, mode="w8a8")
    bad = ids.clone()
    bad[1, 0] = 300
    if device == "cpu":
        with pytest.raises(ValueError, match=r"topk_ids\[1,0\] = 300"):
            moe(x, w, bad)
    else:
        moe(x, w, bad)  # the GPU skips the slot and records it
        with pytest.raises(ValueError, match=r"outside \[-1, 8\)"):
            moe.check_errors()
        moe.check_errors()  # cleared


@needs_cuda
def test_inputs_on_the_wrong_device_raise():
    moe = nvfp4moe.Nvfp4MoE(**to(make_experts(), "cuda"), top_k=2, max_tokens=8)
    x, w, ids = make_batch(4, 128, 8, 2, device="cuda")
    with pytest.raises(ValueError, match="topk_ids is on cpu"):
        moe(x, w, ids.cpu())


def test_from_checkpoint_refuses_mxfp4_layers_by_name():
    fixtures = os.environ["NVFP4MOE_FIXTURES"]
    with pytest.raises(Exception, match="holds MXFP4 experts; the PyTorch ops take NVFP4"):
        nvfp4moe.Nvfp4MoE.from_checkpoint(os.path.join(fixtures, "formats", "gpt_oss"), 0,
                                          top_k=2, max_tokens=8, device="cpu")


def test_nan_block_scales_are_rejected_at_load():
    t = make_experts()
    t["w2_weight_scale"].view(torch.uint8)[0, 0, 0] = 0x7F
    with pytest.raises(ValueError, match=r"block scales\[expert 0, row 0, block 0\] = 0x7F is NaN"):
        nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=8)


def test_the_readme_example_runs_as_written():
    """Runs the README's Python example verbatim (on the GPU when there is one)."""
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
    text = open(readme).read()
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(example, "README.md example", "exec"), {})
