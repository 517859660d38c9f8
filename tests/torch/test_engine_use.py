"""The Python layer as inference engines use it, and as careless callers misuse it:
inference mode, torch.compile, growing token counts, weights changed in place, bounded caches,
dtype casts, concurrent callers, the shared workspace, ids past int32, checkpoints of both
producers through the library's one reader.

CPU tests run everywhere torch is installed (CI); CUDA variants skip without an sm_90 GPU.
"""
import gc
import os
import threading

import pytest
import torch

import nvfp4moe
from test_torch import (CUDA, DEVICES, assert_close_bf16, dequantize, make_batch, make_experts,
                        needs_cuda, reference_moe, to)

FIXTURES = os.environ.get("NVFP4MOE_FIXTURES")
needs_fixtures = pytest.mark.skipif(not FIXTURES, reason="NVFP4MOE_FIXTURES is not set (ctest "
                                    "sets it)")
WEIGHTS = ("w13_weight", "w13_weight_scale", "w13_weight_scale_2", "w2_weight", "w2_weight_scale",
           "w2_weight_scale_2")


def fused(t, x, w, ids, **options):
    return nvfp4moe.fused_experts(x, *(t[name] for name in WEIGHTS), w, ids, **options)


# ---- fused_experts where engines call it ---------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_fused_experts_under_inference_mode(device):
    t = to(make_experts(), device)
    x, w, ids = make_batch(7, 128, 8, 2, device=device)
    expected = reference_moe(make_experts(), x.cpu(), w.cpu(), ids.cpu())
    with torch.inference_mode():
        assert_close_bf16(fused(t, x, w, ids).cpu(), expected)
        # Weights made inside inference mode have no version counter: still served.
        inference_weights = {k: v.clone() for k, v in t.items()}
        assert_close_bf16(fused(inference_weights, x, w, ids).cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_experts_under_torch_compile_fullgraph(device):
    t = to(make_experts(), device)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.router = torch.nn.Linear(128, 8, bias=False, dtype=torch.bfloat16)
            for name in WEIGHTS:
                self.register_buffer(name, t[name])

        def forward(self, x):
            weights, ids = torch.softmax(self.router(x).float(), -1).topk(2, dim=-1)
            return x + nvfp4moe.fused_experts(x, *(getattr(self, n) for n in WEIGHTS), weights,
                                              ids)

    block = Block().to(device)
    x = torch.randn(12, 128, dtype=torch.bfloat16, device=device)
    eager = block(x)
    compiled = torch.compile(block, fullgraph=True)
    assert_close_bf16(compiled(x), eager)
    layers = len(nvfp4moe.module._LAYERS.layers)
    assert_close_bf16(compiled(x), eager)
    assert len(nvfp4moe.module._LAYERS.layers) == layers  # compiled calls reuse the layer


@pytest.mark.parametrize("device", DEVICES)
def test_fused_experts_takes_more_tokens_than_its_first_call(device):
    t = to(make_experts(), device)
    for tokens in (2, 40, 300, 5):
        x, w, ids = make_batch(tokens, 128, 8, 2, seed=tokens, device=device)
        assert_close_bf16(fused(t, x, w, ids).cpu(),
                          reference_moe(make_experts(), x.cpu(), w.cpu(), ids.cpu()))


@pytest.mark.parametrize("device", DEVICES)
def test_fused_experts_sees_weights_changed_in_place(device):
    base = make_experts()
    other = make_experts(seed=5)
    t = to(base, device)
    x, w, ids = make_batch(9, 128, 8, 2, device=device)

    def check(expected_weights):
        assert_close_bf16(fused(t, x, w, ids).cpu(),
                          reference_moe(expected_weights, x.cpu(), w.cpu(), ids.cpu()))

    check(base)
    with torch.no_grad():
        for name in WEIGHTS:  # copy_ through the tensor: its version counter moves
            t[name].copy_(other[name].to(device))
    check(other)
    for name in WEIGHTS:  # new tensors assigned to the same names
        t[name] = base[name].clone().to(device)
    check(base)
    # A write the version counter cannot see (the usual `param.data.copy_` of weight loading)
    # is served after invalidate().
    for name in WEIGHTS:
        t[name].data.copy_(other[name].to(device))
    nvfp4moe.invalidate()
    check(other)


@pytest.mark.parametrize("device", DEVICES)
def test_a_new_tensor_in_reused_storage_is_not_mistaken_for_the_old(device):
    x, w, ids = make_batch(6, 128, 8, 2, device=device)
    for seed in range(4):  # each set dies before the next is made, so storage is reused
        weights = make_experts(seed=seed)
        t = to(weights, device)
        assert_close_bf16(fused(t, x, w, ids).cpu(),
                          reference_moe(weights, x.cpu(), w.cpu(), ids.cpu()))
        del t
        gc.collect()


def test_the_fused_experts_cache_is_bounded_and_drops_dead_weights():
    cache = nvfp4moe.module._LAYERS
    capacity = cache.capacity
    cache.capacity = 3
    try:
        x, w, ids = make_batch(4, 128, 8, 2)
        kept = []
        for seed in range(6):
            kept.append(make_experts(seed=seed))
            fused(kept[-1], x, w, ids)
            assert len(cache.layers) <= 3
        kept.clear()
        gc.collect()
        assert len(cache.layers) == 0  # layers of weights that died are gone with them
    finally:
        cache.capacity = capacity


# ---- modules --------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_module_dtype_casts_leave_the_scales_exact(device):
    t = to(make_experts(), device)
    x, w, ids = make_batch(8, 128, 8, 2, device=device)
    moe = nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=8)
    expected = moe(x, w, ids)
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.float(),
                 lambda m: m.to(device, torch.float16)):
        cast(moe)
        assert moe.w13_global_scale.dtype == torch.float32
        assert torch.equal(moe(x, w, ids), expected)
    v, s, g = nvfp4moe.quantize(torch.randn(32, 128).to(torch.bfloat16))
    linear = nvfp4moe.Nvfp4Linear(v.to(device), s.to(device), g.to(device), max_tokens=8)
    expected = linear(x)
    linear.to(torch.bfloat16)
    assert torch.equal(linear(x), expected)


@needs_cuda
def test_a_module_made_on_the_cpu_moves_to_the_gpu():
    t = make_experts()
    x, w, ids = make_batch(8, 128, 8, 2)
    moe = nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=8)
    expected = moe(x, w, ids)
    moe.to("cuda")
    assert_close_bf16(moe(x.cuda(), w.cuda(), ids.cuda()).cpu(), expected)
    with pytest.raises(RuntimeError, match="prepared for cuda"):
        moe.to("cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_concurrent_callers_of_one_module_get_their_own_results(device):
    t = to(make_experts(experts=8, hidden=256, intermediate=128), device)
    moe = nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=64)
    batches = [make_batch(64, 256, 8, 2, seed=s, device=device) for s in range(8)]
    expected = [moe(*b) for b in batches]
    results = [None] * len(batches)

    def work(i):
        stream = torch.cuda.Stream() if device == "cuda" else None
        with torch.cuda.stream(stream) if stream else torch.no_grad():
            for _ in range(5):
                results[i] = moe(*batches[i])
            if stream:
                stream.synchronize()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected):
        assert torch.equal(got, want)


def test_many_layers_hold_one_workspace():
    """Ten layers, each able to run 4096 tokens: one workspace, in the allocator and in the
    process's memory (every layer runs its largest batch, touching all of it)."""
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    nvfp4moe.workspace.reset()
    t = make_experts(experts=4, hidden=256, intermediate=128)
    x, w, ids = make_batch(4096, 256, 4, 2)
    first = nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=4096)
    one = nvfp4moe.workspace.nbytes("cpu")
    assert one == first._workspace_nbytes and one > 8 << 20
    first(x, w, ids)
    before = rss()
    layers = [nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=4096) for _ in range(9)]
    for layer in layers:
        layer(x, w, ids)
    grown = rss() - before
    assert nvfp4moe.workspace.nbytes("cpu") == one
    weights = sum(b.numel() * b.element_size() for b in layers[0].buffers())
    # Nine more private workspaces would add 9 * one. The CPU backend's per-expert scratch
    # (up to ~4 MB per task here, kept by the threads' malloc arenas after it is freed) is
    # noise of about one workspace, so the bound sits well between the two.
    assert grown < 9 * weights + 4 * one, (grown, weights, one)


@needs_cuda
def test_many_layers_hold_one_workspace_on_the_gpu():
    nvfp4moe.workspace.reset()
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    t = to(make_experts(experts=4, hidden=256, intermediate=128), "cuda")
    layers = [nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=8192) for _ in range(10)]
    one = nvfp4moe.workspace.nbytes("cuda")
    weights = sum(b.numel() * b.element_size() for b in layers[0].buffers())
    used = torch.cuda.memory_allocated() - start
    assert used < 10 * weights + 2 * one, (used, weights, one)
    assert one > 10 * weights  # so a workspace per layer could not hide in that bound


# ---- hostile and careless input -----------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_ids_past_int32_are_out_of_range_not_another_expert(device):
    t = to(make_experts(), device)
    moe = nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=8)
    x, w, ids = make_batch(4, 128, 8, 2, device=device)
    wide = ids.to(torch.int64)
    wide[2, 1] = 2**32 + 3  # would wrap to expert 3
    if device == "cpu":
        with pytest.raises(ValueError, match=r"topk_ids\[2,1\] = 2147483647"):
            moe(x, w, wide)
    else:
        moe(x, w, wide)
        with pytest.raises(ValueError, match="outside"):
            moe.check_errors()
    with pytest.raises(TypeError, match="integer tensor"):
        moe(x, w, ids.float())


def test_shapes_are_checked_exactly_not_by_size():
    t = make_experts()
    transposed = dict(t)
    transposed["w2_weight_scale"] = t["w2_weight_scale"].transpose(1, 2).contiguous()
    with pytest.raises(ValueError, match=r"scales have shape \[8, 4, 128\], expected \[8, 128, 4\]"):
        nvfp4moe.Nvfp4MoE(**transposed, top_k=2, max_tokens=8)
    with pytest.raises(ValueError, match=r"w2_weight has shape \(8, 64, 64\), expected"):
        nvfp4moe.Nvfp4MoE(**dict(t, w2_weight=t["w2_weight"].reshape(8, 64, 64)), top_k=2,
                          max_tokens=8)
    with pytest.raises(ValueError, match=r"x has shape \(64,\), expected 2-D"):
        nvfp4moe.quantize(torch.randn(64))
    with pytest.raises(ValueError, match="w2_weight_scale_2 has shape"):
        nvfp4moe.Nvfp4MoE(**dict(t, w2_weight_scale_2=torch.ones(3)), top_k=2, max_tokens=8)


@needs_fixtures
def test_from_checkpoint_reads_both_producers_and_the_fused_layout():
    formats = os.path.join(FIXTURES, "formats")
    for path, layer in ((os.path.join(formats, "ct_qwen3"), 2),
                        (os.path.join(formats, "fused_modelopt.safetensors"), 1),
                        (os.path.join(formats, "deepseek_v4_mixed.safetensors"), 1)):
        moe = nvfp4moe.Nvfp4MoE.from_checkpoint(path, layer, top_k=2, max_tokens=8, device="cpu")
        x, w, ids = make_batch(8, moe.hidden, moe.local_experts, 2)
        assert torch.isfinite(moe(x, w, ids).float()).all()
    a = nvfp4moe.Nvfp4MoE.from_checkpoint(os.path.join(formats, "pair_modelopt"), 0, top_k=2,
                                          max_tokens=8, device="cpu", mode="w4a4",
                                          activation_scale="static")
    b = nvfp4moe.Nvfp4MoE.from_checkpoint(os.path.join(formats, "pair_ct"), 0, top_k=2,
                                          max_tokens=8, device="cpu", mode="w4a4",
                                          activation_scale="static")
    x, w, ids = make_batch(8, 64, 4, 2)
    assert torch.equal(a(x, w, ids), b(x, w, ids))  # the same experts in both formats


@needs_fixtures
def test_from_checkpoint_matches_compressed_tensors_own_decompression():
    """The producer's own definition of its format (compressed-tensors' unpacking of the codes,
    x = codes * scale / global_scale, here in float64) against what the library imported: the
    layer computed from those weights in float64 equals ours to bf16 rounding."""
    helpers = pytest.importorskip("compressed_tensors.compressors.nvfp4.helpers",
                                  reason="the producer's package (compressed-tensors) is not here")
    unpack_fp4_from_uint8 = helpers.unpack_fp4_from_uint8
    from safetensors.torch import load_file

    path = os.path.join(FIXTURES, "formats", "ct_qwen3")
    moe = nvfp4moe.Nvfp4MoE.from_checkpoint(path, 1, top_k=2, max_tokens=16, device="cpu")
    tensors = load_file(os.path.join(path, "model-00001-of-00002.safetensors"))

    def producer_weight(expert, projection):
        prefix = f"model.layers.1.mlp.experts.{expert}.{projection}."
        packed = tensors[prefix + "weight_packed"]
        rows, cols = packed.shape[0], packed.shape[1] * 2
        codes = unpack_fp4_from_uint8(packed, rows, cols, dtype=torch.float64)
        scale = tensors[prefix + "weight_scale"].double().repeat_interleave(16, dim=1)
        return codes * (scale / tensors[prefix + "weight_global_scale"].double())

    x, w, ids = make_batch(16, 64, 4, 2, seed=3)
    out = torch.zeros(16, 64, dtype=torch.float64)
    for e in range(4):
        rows, slots = (ids == e).nonzero(as_tuple=True)
        a = x[rows].double()
        h = torch.nn.functional.silu(a @ producer_weight(e, "gate_proj").T) * (
            a @ producer_weight(e, "up_proj").T)
        h = h.to(torch.bfloat16).double()
        out.index_add_(0, rows, w[rows, slots].double()[:, None] *
                       (h @ producer_weight(e, "down_proj").T))
    assert_close_bf16(moe(x, w, ids), out.to(torch.bfloat16))


@needs_fixtures
def test_from_checkpoint_refuses_what_the_cli_refuses():
    malformed = os.path.join(FIXTURES, "malformed_formats")
    for name, message in (("scales_as_e5m2", "has dtype F8_E5M2, expected F8_E4M3"),
                          ("missing_expert", "expert 2 is missing"),
                          ("nan_global_scale", "expected a finite value"),
                          ("ct_channel_strategy", "strategy is channel")):
        with pytest.raises(ValueError, match=message):
            nvfp4moe.Nvfp4MoE.from_checkpoint(os.path.join(malformed, name), 5, top_k=2,
                                              max_tokens=8, device="cpu")
    with pytest.raises(ValueError, match="is not a plain file name"):
        nvfp4moe.Nvfp4MoE.from_checkpoint(os.path.join(FIXTURES, "malformed_index", "traversal"),
                                          0, top_k=2, max_tokens=8, device="cpu")
    with pytest.raises(ValueError, match="no MoE layer 2 .layers found: 1, 3."):
        nvfp4moe.Nvfp4MoE.from_checkpoint(os.path.join(FIXTURES, "modelopt_hf"), 2, top_k=2,
                                          max_tokens=8, device="cpu")
    with pytest.raises(NotImplementedError, match="holds MXFP4 experts"):
        nvfp4moe.Nvfp4MoE.from_checkpoint(
            os.path.join(FIXTURES, "formats", "deepseek_v4_mixed.safetensors"), 0, top_k=2,
            max_tokens=8, device="cpu", prefix="mtp.{layer}.ffn.experts.", naming="deepseek")


@needs_fixtures
def test_a_tensor_in_two_shards_is_refused(tmp_path):
    shard = os.path.abspath(os.path.join(FIXTURES, "modelopt_hf",
                                         "model-00002-of-00002.safetensors"))
    for name in ("a.safetensors", "b.safetensors"):
        os.symlink(shard, tmp_path / name)
    with pytest.raises(ValueError, match="appears in both"):
        nvfp4moe.Nvfp4MoE.from_checkpoint(tmp_path, 3, top_k=2, max_tokens=8, device="cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_errors_name_what_is_wrong(device):
    t = to(make_experts(), device)
    bad = dict(t)
    bad["w13_weight_scale_2"] = torch.ones(8, 3, device=device)
    with pytest.raises(ValueError, match=r"w13_weight_scale_2 has shape \(8, 3\), expected"):
        nvfp4moe.Nvfp4MoE(**bad, top_k=2, max_tokens=8)
    with pytest.raises(ValueError, match="activation = 'gelu', expected one of"):
        nvfp4moe.Nvfp4MoE(**t, top_k=2, max_tokens=8, activation="gelu")
    x = torch.randn(4, 128, device=device)
    x[1, 5] = float("inf")
    with pytest.raises(ValueError, match=r"x: element \[1, 5\] is inf"):
        nvfp4moe.quantize(x.cpu())
