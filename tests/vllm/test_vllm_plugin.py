"""nvfp4moe inside real vLLM (the pinned CPU build), end to end, in the venv that
scripts/vllm_env.sh makes:

  - a tiny Qwen3-MoE quantized to ModelOpt NVFP4 by `nvfp4moe quantize`, served with
    quantization="nvfp4moe", gives its exact BF16 twin's greedy tokens and logprobs;
  - the same with the attention projections in NVFP4 too (fused qkv with three global scales);
  - the same checkpoint converted to compressed-tensors by compressed-tensors' own converter;
  - a negative control: the profiler sees nvfp4moe's ops in the NVFP4 runs and not in the twin's,
    and zeroing the experts changes the twin's tokens (so the MoE matters to them).

Each engine runs in a process of its own (tests/vllm/serve.py). Needs NVFP4MOE_BIN (the CLI).
"""
import json
import os
import subprocess
import sys

import pytest

import tiny_models

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("NVFP4MOE_BIN")
pytestmark = pytest.mark.skipif(not BIN, reason="NVFP4MOE_BIN (the nvfp4moe CLI) is not set")


def serve(model, tmp_path, quantization=None):
    out = tmp_path / f"{os.path.basename(model)}-{quantization}.json"
    command = [sys.executable, os.path.join(HERE, "serve.py"), str(model), str(out)]
    if quantization:
        command += ["--quantization", quantization]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.load(open(out))


def assert_same_generation(nvfp4, twin):
    assert nvfp4["tokens"] == twin["tokens"]
    for ours, theirs in zip(nvfp4["logprobs"], twin["logprobs"]):
        for a, b in zip(ours, theirs):
            assert abs(a - b) <= 1e-2, (ours, theirs)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    bf16 = tiny_models.make_bf16(base / "bf16")
    nvfp4 = base / "nvfp4"
    subprocess.run([BIN, "quantize", str(bf16), str(nvfp4)], check=True, capture_output=True)
    return {"bf16": bf16, "nvfp4": nvfp4,
            "twin": tiny_models.make_twin(nvfp4, bf16, base / "twin")}


def test_nvfp4_experts_serve_the_twins_tokens(models, tmp_path):
    twin = serve(models["twin"], tmp_path)
    nvfp4 = serve(models["nvfp4"], tmp_path, "nvfp4moe")
    assert_same_generation(nvfp4, twin)
    assert nvfp4["nvfp4moe_ops"] == ["nvfp4moe::moe_forward"]
    assert twin["nvfp4moe_ops"] == []
    zeroed = serve(tiny_models.zero_experts(models["twin"], tmp_path / "zeroed"), tmp_path)
    assert zeroed["tokens"] != twin["tokens"], "the experts do not move the tokens"


def test_nvfp4_attention_projections_as_well(models, tmp_path):
    nvfp4 = tmp_path / "nvfp4_attention"
    subprocess.run(["cp", "-r", str(models["nvfp4"]), str(nvfp4)], check=True)
    tiny_models.quantize_attention(nvfp4)
    twin = tiny_models.make_twin(nvfp4, models["bf16"], tmp_path / "twin_attention")
    ours = serve(nvfp4, tmp_path, "nvfp4moe")
    assert_same_generation(ours, serve(twin, tmp_path))
    assert ours["nvfp4moe_ops"] == ["nvfp4moe::linear", "nvfp4moe::moe_forward"]


def test_a_compressed_tensors_checkpoint(models, tmp_path):
    """The ModelOpt checkpoint as compressed-tensors' converter turns it into its own format
    (reciprocal scales, weight_packed); powers of two make 1/(1/g) == g, so same tokens."""
    import torch
    from compressed_tensors.entrypoints.convert.converters.modelopt_nvfp4 import (
        ModelOptNvfp4Converter)
    from safetensors.torch import load_file, save_file

    out = tmp_path / "ct"
    subprocess.run(["cp", "-r", str(models["nvfp4"]), str(out)], check=True)
    config = json.load(open(out / "config.json"))
    ignore = config["quantization_config"]["ignore"]
    converter = ModelOptNvfp4Converter(ignore=ignore, targets=["Linear"])
    index = json.load(open(out / "model.safetensors.index.json"))
    weight_map = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors = {k: v for k, v in load_file(out / shard).items()}
        converted = converter.process(tensors)
        save_file({k: v.contiguous() for k, v in converted.items()}, out / shard)
        weight_map.update({k: shard for k in converted})
    json.dump({"metadata": {}, "weight_map": weight_map}, open(out / "model.safetensors.index.json",
                                                             "w"))
    config["quantization_config"] = converter.create_config().model_dump(mode="json")
    json.dump(config, open(out / "config.json", "w"))
    os.remove(out / "hf_quant_config.json")
    assert any(k.endswith("weight_packed") for k in weight_map) and torch

    ours = serve(out, tmp_path, "nvfp4moe")
    assert_same_generation(ours, serve(models["twin"], tmp_path))
    assert ours["nvfp4moe_ops"] == ["nvfp4moe::moe_forward"]


def test_a_checkpoint_of_another_format_is_refused_with_a_message(models, tmp_path):
    out = tmp_path / "fp8_declared"
    subprocess.run(["cp", "-r", str(models["nvfp4"]), str(out)], check=True)
    config = json.load(open(out / "config.json"))
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    json.dump(config, open(out / "config.json", "w"))
    os.remove(out / "hf_quant_config.json")
    command = [sys.executable, os.path.join(HERE, "serve.py"), str(out), str(tmp_path / "x.json"),
               "--quantization", "nvfp4moe"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "serves NVFP4 checkpoints" in result.stderr, result.stderr[-3000:]
