"""The nvfp4moe command-line tool, driven as a user drives it.

Checkpoints written by the tool are read back with the official safetensors parser
(safetensors.deserialize), never with our own reader.
"""
import json
import os
import re
import subprocess

import numpy as np
import pytest
from safetensors import deserialize

BIN = os.environ["NVFP4MOE_BIN"]
FIXTURES = os.environ["NVFP4MOE_FIXTURES"]


def run(*args, ok=True):
    result = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=600)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def expect_failure(*args, message):
    result = run(*args, ok=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nvfp4moe: error: "), lines[0]
    assert message in lines[0], lines[0]


def read_safetensors(path):
    with open(path, "rb") as f:
        return {name: info for name, info in deserialize(f.read())}


def bf16_to_float(raw):
    return (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)


def e4m3_to_float(codes):
    codes = codes.astype(np.int32)
    exponent, mantissa = (codes >> 3) & 15, codes & 7
    value = np.where(exponent == 0, mantissa * 2.0**-9, (8 + mantissa) * 2.0 ** (exponent - 10))
    return np.where(codes & 0x80, -value, value)


def dequantize(weight, scale, scale_2):
    packed = np.frombuffer(weight["data"], np.uint8).reshape(weight["shape"])
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    scales = e4m3_to_float(np.frombuffer(scale["data"], np.uint8)).reshape(scale["shape"])
    g = np.frombuffer(scale_2["data"], np.float32)[0]
    return E2M1[codes] * np.repeat(scales, 16, axis=1) * g


def test_demo_reports_accuracy_against_bf16():
    out = run("demo", "--tokens", "16").stdout
    rows = {m.group(1): float(m.group(2)) for m in
            re.finditer(r"^(W4A16|W4A4|W4A8)\s+cpu\s+[\d.]+\s+([\d.]+)", out, re.M)}
    assert set(rows) == {"W4A16", "W4A4", "W4A8"}, out
    assert rows["W4A16"] > 0.98 and rows["W4A4"] > 0.96 and rows["W4A8"] > 0.97, out


def test_accuracy_compares_every_mode():
    out = run("accuracy", "--shape", "small", "--experts", "4", "--tokens", "4",
              "--distribution", "heavy-tailed").stdout
    rows = {m.group(1): [float(v) for v in m.groups()[1:]] for m in re.finditer(
        r"^heavy-tailed\s+(W4A16|W4A4|W4A8)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)",
        out, re.M)}
    assert set(rows) == {"W4A16", "W4A4", "W4A8"}, out
    assert rows["W4A16"][3] == 0.0  # against itself
    assert 0 < rows["W4A8"][3] < 0.5 * rows["W4A4"][3], out
    expect_failure("accuracy", "--shape", "llama", message="unknown shape 'llama' (known: deepseek-v3")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized") / "ckpt"
    result = run("quantize", os.path.join(FIXTURES, "bf16_moe"), out)
    assert "quantized 48 expert weights" in result.stdout
    return out


def test_quantize_writes_a_modelopt_checkpoint(quantized):
    source_dir = os.path.join(FIXTURES, "bf16_moe")
    index = json.load(open(quantized / "model.safetensors.index.json"))["weight_map"]
    shards = {name: read_safetensors(quantized / name) for name in set(index.values())}
    for name, shard in index.items():
        assert name in shards[shard], name
    tensors = {name: shards[index[name]][name] for name in index}
    originals = {}
    for shard in os.listdir(source_dir):
        if shard.endswith(".safetensors"):
            originals.update(read_safetensors(os.path.join(source_dir, shard)))

    experts = [n for n in originals if ".experts." in n]
    assert len(experts) == 48

    def original(name):
        rows, cols = originals[name]["shape"]
        return bf16_to_float(originals[name]["data"]).reshape(rows, cols)

    for name in experts:
        base = name[: -len(".weight")]
        rows, cols = originals[name]["shape"]
        weight, scale, scale_2 = (tensors[base + s] for s in
                                  (".weight", ".weight_scale", ".weight_scale_2"))
        assert (weight["dtype"], weight["shape"]) == ("U8", [rows, cols // 2])
        assert (scale["dtype"], scale["shape"]) == ("F8_E4M3", [rows, cols // 16])
        assert (scale_2["dtype"], scale_2["shape"]) == ("F32", [])
        # Gate and up of an expert share one global scale, from the larger amax (as ModelOpt
        # writes it, and as engines read it: one scale per expert for w13).
        partners = [base.replace(p, q) + ".weight" for p in ("gate_proj", "up_proj")
                    for q in ("gate_proj", "up_proj") if p in base] or [name]
        amax = max(np.abs(original(n)).max() for n in partners)
        np.testing.assert_allclose(np.frombuffer(scale_2["data"], np.float32)[0], amax / 2688,
                                   rtol=1e-6)
        error = np.linalg.norm(dequantize(weight, scale, scale_2) - original(name))
        assert error / np.linalg.norm(original(name)) < 0.12, name
    for base in {n[: -len(".gate_proj.weight")] for n in experts if "gate_proj" in n}:
        gate, up = (tensors[f"{base}.{p}.weight_scale_2"]["data"] for p in ("gate_proj", "up_proj"))
        assert gate == up, base
    for name, info in originals.items():
        if ".experts." not in name:
            assert tensors[name] == info, name  # copied unchanged
    config = json.load(open(quantized / "config.json"))
    assert config["model_type"] == "test_moe"
    assert config["quantization_config"]["quant_method"] == "modelopt"
    assert config["quantization_config"]["quant_algo"] == "NVFP4"
    assert "model.layers.0.self_attn.o_proj" in config["quantization_config"]["ignore"]
    quant_config = json.load(open(quantized / "hf_quant_config.json"))["quantization"]
    assert quant_config["quant_algo"] == "NVFP4" and quant_config["group_size"] == 16
    assert "model.layers.0.self_attn.o_proj" in quant_config["exclude_modules"]
    # Every other file of the input directory travels with the weights.
    for name in os.listdir(source_dir):
        if not name.endswith(".safetensors") and name not in ("config.json",
                                                              "model.safetensors.index.json"):
            assert open(quantized / name, "rb").read() == open(os.path.join(source_dir, name),
                                                               "rb").read(), name
    assert sorted(os.listdir(quantized)) == sorted(
        ["config.json", "hf_quant_config.json", "model.safetensors.index.json",
         "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
         "tokenizer.json", "generation_config.json"])


def test_inspect_lists_the_layers(quantized):
    out = run("inspect", os.path.join(FIXTURES, "modelopt_hf"), "--scales").stdout
    assert "2 shard(s)" in out and "2 MoE layer(s)" in out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+model", line)]
    assert [r[0] for r in rows] == ["1", "3"]
    assert all(r[2:6] == ["4", "64", "32", "NVFP4/modelopt"] for r in rows), rows
    out = run("inspect", quantized).stdout
    assert "2 MoE layer(s)" in out and "NVFP4/modelopt" in out
    assert "quantization config (config.json): ModelOpt" in out and "producer: nvfp4moe" in out
    out = run("inspect", os.path.join(FIXTURES, "bf16_moe")).stdout
    assert "BF16" in out and "quantization config: none" in out


def accuracy(out):
    match = re.search(r"^(W4A16|W4A4|W4A8)\s+\S+\s+\S+\s+\d+\s+[\d.]+\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert match, out
    return float(match.group(2))


def test_run_a_checkpoint_layer(quantized):
    hf = os.path.join(FIXTURES, "modelopt_hf")
    assert accuracy(run("run", hf, "--layer", "3", "--tokens", "5", "--top-k", "2").stdout) > 0.999
    out = run("run", hf, "--layer", "1", "--tokens", "9", "--top-k", "2", "--mode", "w4a4",
              "--activation-scale", "static", "--activation", "swiglu_clamped").stdout
    assert accuracy(out) > 0.9
    out = run("run", hf, "--layer", "1", "--tokens", "6", "--top-k", "2", "--mode", "w4a8").stdout
    assert re.search(r"^W4A8\s+cpu", out, re.M) and accuracy(out) > 0.99, out
    out = run("run", hf, "--layer", "1", "--tokens", "4", "--top-k", "3", "--first-expert", "1",
              "--local-experts", "2").stdout
    assert "2 local from 1" in out and accuracy(out) > 0.999
    deepseek = os.path.join(FIXTURES, "modelopt_deepseek.safetensors")
    assert accuracy(run("run", deepseek, "--layer", "2", "--tokens", "3", "--top-k", "2").stdout) > 0.999
    assert accuracy(run("run", quantized, "--layer", "1", "--tokens", "8", "--top-k", "2").stdout) > 0.999


def test_failures_exit_nonzero_with_one_line(quantized):
    hf = os.path.join(FIXTURES, "modelopt_hf")
    expect_failure("run", hf, "--layer", "2", message="no MoE layer 2 (layers found: 1, 3)")
    expect_failure("run", os.path.join(FIXTURES, "modelopt_deepseek.safetensors"), "--layer", "2",
                   "--mode", "w4a4", "--activation-scale", "static",
                   message="static W4A4 needs gate_up_input_scale")
    expect_failure("run", hf, "--layer", "3", "--first-expert", "3", "--local-experts", "2",
                   message="leaves the layer's 4 experts")
    expect_failure("run", hf, "--layer", "3", "--tokens", "0", message="--tokens")
    expect_failure("inspect", os.path.join(FIXTURES, "malformed", "overlap.safetensors"),
                   message="overlap")
    expect_failure("inspect", os.path.join(FIXTURES, "nothing_here"), message="no such file")
    expect_failure("quantize", hf, "/tmp/never_written", message="NVFP4 already")
    expect_failure("quantize", quantized, quantized, message="overlaps the input")
    expect_failure("run", os.path.join(FIXTURES, "bf16_moe"), "--layer", "0",
                   message="not NVFP4; convert it with `nvfp4moe quantize`")
    expect_failure("frobnicate", message="frobnicate")
    expect_failure("demo", "--tokens", "x", message="--tokens")
    expect_failure(message="subcommand is required")
