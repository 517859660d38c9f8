"""Hostile and careless files against the command-line tool: each must end in one line that
says what is wrong, a non-zero exit, and no hang, crash or silently wrong answer."""
import json
import os
import re
import struct
import subprocess

import pytest

from test_cli import BIN, FIXTURES, expect_failure, run


def raw_safetensors(path, header, data=b""):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    return path


def test_a_named_pipe_is_refused_without_blocking(tmp_path):
    pipe = tmp_path / "model.safetensors"
    os.mkfifo(pipe)
    result = subprocess.run([BIN, "inspect", str(pipe)], capture_output=True, text=True,
                            timeout=20)
    assert result.returncode != 0 and "is a named pipe" in result.stderr
    index = tmp_path / "sharded"
    index.mkdir()
    os.mkfifo(index / "shard.safetensors")
    (index / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "shard.safetensors"}}))
    result = subprocess.run([BIN, "inspect", str(index)], capture_output=True, text=True,
                            timeout=20)
    assert result.returncode != 0 and "shard.safetensors: is a named pipe" in result.stderr


@pytest.mark.parametrize("name, header, data, message", [
    ("deep", b'{"a": {"dtype": "U8", "shape": ' + b"[" * 200000 + b"]" * 200000 +
     b', "data_offsets": [0, 0]}}', b"", "nested more than 3 levels"),
    ("duplicate", b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
     b'"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}', b"xx", "appears twice"),
    ("trailing", {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"xyz",
     "belongs to no tensor"),
    ("overflow", {"a": {"dtype": "F64", "shape": [2**62, 8], "data_offsets": [0, 0]}}, b"",
     "overflows 64-bit byte counts"),
    ("huge_name", {"n" * 1000000: {"dtype": "U8", "shape": [5], "data_offsets": [0, 1]}}, b"x",
     "(1000000 bytes)"),
])
def test_malformed_headers_end_in_one_line(tmp_path, name, header, data, message):
    path = raw_safetensors(tmp_path / f"{name}.safetensors", header, data)
    expect_failure("inspect", path, message=message)


def test_a_shard_named_dotdot_is_refused(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": ".."}}))
    expect_failure("inspect", tmp_path, message="'..' is not a plain file name")


def test_a_stale_index_is_refused(tmp_path):
    """A shard written after its index (an interrupted conversion) holds tensors the index does
    not list."""
    raw_safetensors(tmp_path / "s.safetensors",
                    {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                     "b": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, b"xy")
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "s.safetensors"}}))
    expect_failure("inspect", tmp_path, message="holds tensor 'b', which the index does not list")


def test_formats_of_both_producers_and_layouts_run(tmp_path):
    formats = os.path.join(FIXTURES, "formats")
    out = run("inspect", os.path.join(formats, "ct_qwen3")).stdout
    assert "compressed-tensors" in out and "NVFP4/compressed-tensors" in out
    # Cosine against the BF16 layer of the dequantized weights: exact modes agree to rounding,
    # W4A4 carries its activations' quantization error.
    for path, layer, extra, cosine in (
            ("ct_qwen3", 2, ["--mode", "w4a4", "--activation-scale", "static"], 0.95),
            ("ct_qwen3", 1, [], 0.999), ("fused_modelopt.safetensors", 1, [], 0.999),
            ("pair_ct", 0, [], 0.999), ("deepseek_v4_mixed.safetensors", 1, [], 0.999)):
        result = run("run", os.path.join(formats, path), "--layer", layer, "--tokens", "5",
                     "--top-k", "2", *extra).stdout
        assert float(result.splitlines()[-1].split()[-2]) > cosine, result
    expect_failure("run", os.path.join(formats, "deepseek_v4_mixed.safetensors"), "--layer", "0",
                   message="layer 0 matches several expert prefixes")
    # MXFP4: DeepSeek-V4's MTP experts and gpt-oss's (its config.json implies swigluoai, limit 7),
    # on the CPU reference.
    result = run("run", os.path.join(formats, "deepseek_v4_mixed.safetensors"), "--layer", "0",
                 "--prefix", "mtp.{layer}.ffn.experts.", "--naming", "deepseek", "--tokens", "5",
                 "--top-k", "2").stdout
    assert float(result.splitlines()[-1].split()[-2]) > 0.999, result
    result = run("run", os.path.join(formats, "gpt_oss"), "--layer", "1", "--tokens", "5",
                 "--top-k", "2").stdout
    assert re.search(r"^W4A16\s+cpu\s+swigluoai", result, re.M), result
    assert float(result.splitlines()[-1].split()[-2]) > 0.999, result
    out = run("inspect", os.path.join(formats, "gpt_oss"), "--scales").stdout
    assert "MXFP4+bias" in out and "quant_method: mxfp4" in out, out
    expect_failure("inspect", os.path.join(formats, "fp8_experts.safetensors"),
                   message="none of its 1 MoE layer(s) is in a format this version supports")
    expect_failure("inspect", os.path.join(FIXTURES, "malformed_formats", "ct_channel_strategy"),
                   message="weights.strategy is channel, expected tensor_group")
    expect_failure("inspect", os.path.join(FIXTURES, "malformed_formats", "missing_expert"),
                   message="expert 2 is missing")
    expect_failure("inspect", os.path.join(FIXTURES, "dtypes.safetensors"),
                   message="no MoE expert tensors found")


def test_an_mxfp4_nan_scale_is_refused(tmp_path):
    """E8M0's 0xFF is NaN: the layer loads (shapes are right) but is refused before it computes."""
    from safetensors.numpy import save_file
    import numpy as np
    prefix = "model.layers.0.mlp.experts."
    scales = np.full((2, 64, 1), 127, np.uint8)
    scales[1, 5, 0] = 0xFF
    save_file({prefix + "gate_up_proj_blocks": np.zeros((2, 64, 1, 16), np.uint8),
               prefix + "gate_up_proj_scales": np.full((2, 64, 1), 127, np.uint8),
               prefix + "down_proj_blocks": np.zeros((2, 32, 1, 16), np.uint8),
               prefix + "down_proj_scales": scales[:, :32, :].copy()},
              str(tmp_path / "model.safetensors"))
    expect_failure("run", tmp_path / "model.safetensors", "--layer", "0", "--tokens", "2",
                   "--top-k", "1", message="down_scales[expert 1, row 5, block 0] = 0xFF is NaN")
