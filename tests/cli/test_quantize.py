"""`nvfp4moe quantize` as a careless or unlucky user meets it: both output formats, outputs that
overlap the input however named, existing outputs, runs killed at random points, full disks and
file-size limits, two runs into one output. OUT must always be absent, the old one, or whole.

Checkpoints the tool writes are read back with the official safetensors parser.
"""
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from safetensors import TensorSpec, deserialize, serialize_file

from test_cli import BIN, FIXTURES, bf16_to_float, dequantize, expect_failure, read_safetensors, run

BF16 = os.path.join(FIXTURES, "bf16_moe")


def bf16(values):
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def write_bf16_checkpoint(directory, experts=8, hidden=128, inter=64, layers=2, seed=0,
                          skip_expert=None, extra_files=True):
    """A sharded BF16 MoE checkpoint (HF naming), one shard per layer."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    weight_map = {}
    for layer in range(layers):
        arrays = {}
        for e in range(experts):
            if e == skip_expert:
                continue
            for p, (rows, cols) in (("gate_proj", (inter, hidden)), ("up_proj", (inter, hidden)),
                                    ("down_proj", (hidden, inter))):
                arrays[f"model.layers.{layer}.mlp.experts.{e}.{p}.weight"] = bf16(
                    rng.standard_normal((rows, cols)) / np.sqrt(cols))
        arrays[f"model.layers.{layer}.self_attn.o_proj.weight"] = bf16(
            rng.standard_normal((hidden, hidden)))
        name = f"model-{layer + 1:05d}-of-{layers:05d}.safetensors"
        serialize_file({k: TensorSpec(dtype="bfloat16", shape=v.shape, data_ptr=v.ctypes.data,
                                      data_len=v.nbytes) for k, v in arrays.items()},
                       os.path.join(directory, name))
        weight_map.update({k: name for k in arrays})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    if extra_files:
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump({"model_type": "qwen3_moe", "num_experts": experts}, f)
    return directory


def snapshot(directory):
    """Every file of a directory: name -> bytes."""
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory))}


def assert_valid_checkpoint(directory, reference):
    """A complete output: the same files as a reference run, each byte-identical, and readable
    by `inspect`."""
    assert snapshot(directory) == reference
    run("inspect", directory)


# ---- formats ------------------------------------------------------------------------------------

def test_compressed_tensors_output_round_trips(tmp_path):
    out = tmp_path / "ct"
    assert "to NVFP4 (compressed-tensors)" in run("quantize", BF16, out, "--format",
                                                  "compressed-tensors").stdout
    config = json.load(open(out / "config.json"))["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    assert config["format"] == "nvfp4-pack-quantized"
    group = config["config_groups"]["group_0"]
    assert group["weights"]["strategy"] == "tensor_group" and group["weights"]["group_size"] == 16
    assert "model.layers.0.self_attn.o_proj" in config["ignore"]
    assert not (out / "hf_quant_config.json").exists()
    # compressed-tensors' own parser accepts the config as a quantization config.
    from compressed_tensors.quantization import QuantizationConfig
    assert QuantizationConfig.model_validate(config).format == "nvfp4-pack-quantized"

    index = json.load(open(out / "model.safetensors.index.json"))["weight_map"]
    tensors = {}
    for shard in set(index.values()):
        tensors.update(read_safetensors(out / shard))
    originals = {}
    for shard in os.listdir(BF16):
        if shard.endswith(".safetensors"):
            originals.update(read_safetensors(os.path.join(BF16, shard)))
    for name, info in originals.items():
        if ".experts." not in name:
            continue
        base = name[: -len(".weight")]
        packed, scale, stored = (tensors[base + s] for s in
                                 (".weight_packed", ".weight_scale", ".weight_global_scale"))
        assert (packed["dtype"], stored["dtype"], stored["shape"]) == ("U8", "F32", [1])
        # Readers take g = 1/stored; the codes were chosen with that g.
        g = np.float32(1) / np.frombuffer(stored["data"], np.float32)[0]
        restored = dequantize(packed, scale, {"data": np.float32(g).tobytes()})
        original = bf16_to_float(info["data"]).reshape(info["shape"])
        assert np.linalg.norm(restored - original) / np.linalg.norm(original) < 0.12, name
    for e in range(8):
        gate, up = (tensors[f"model.layers.1.mlp.experts.{e}.{p}.weight_global_scale"]["data"]
                    for p in ("gate_proj", "up_proj"))
        assert gate == up
    out_run = run("run", out, "--layer", "1", "--tokens", "6", "--top-k", "2").stdout
    assert "W4A16" in out_run and float(out_run.split()[-2]) > 0.999
    assert "NVFP4/compressed-tensors" in run("inspect", out).stdout


def test_quantize_writes_modelopts_bytes(tmp_path):
    """ModelOpt's own NVFP4 quantizer (nvidia-modelopt's NVFP4QTensor) on every expert weight,
    with the global scale gate and up share, gives the bytes `quantize` wrote. (The fixture's
    Gaussian weights hold none of the blocks where the producers' conventions differ.)"""
    import torch
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from modelopt.torch.quantization.qtensor import NVFP4QTensor
    from safetensors.torch import load_file

    out = tmp_path / "q"
    run("quantize", BF16, out)
    ours, originals = {}, {}
    for shard in os.listdir(out):
        if shard.endswith(".safetensors"):
            ours.update(load_file(out / shard))
            originals.update(load_file(os.path.join(BF16, shard)))
    checked = 0
    for name, weight in originals.items():
        if ".experts." not in name:
            continue
        base = name[: -len(".weight")]
        g = ours[base + ".weight_scale_2"].reshape(1)
        packed, scales, _ = NVFP4QTensor.quantize(weight, 16, weights_scaling_factor_2=g)
        assert torch.equal(packed._quantized_data, ours[base + ".weight"]), name
        assert torch.equal(scales.view(torch.uint8), ours[base + ".weight_scale"].view(torch.uint8)), name
        checked += 1
    assert checked == 48


def test_both_formats_compute_the_same_layer(tmp_path):
    """ModelOpt and compressed-tensors outputs of one BF16 input: the reciprocal storage of
    compressed-tensors may move g by an ulp, so the layers agree to bf16 rounding."""
    outputs = {}
    for fmt in ("modelopt", "compressed-tensors"):
        run("quantize", BF16, tmp_path / fmt, "--format", fmt)
        outputs[fmt] = run("run", tmp_path / fmt, "--layer", "0", "--tokens", "5", "--top-k",
                           "3").stdout.splitlines()[-1].split()
    assert outputs["modelopt"][-2] == outputs["compressed-tensors"][-2]  # cosine


def test_single_file_input_writes_a_single_file(tmp_path):
    source = tmp_path / "one.safetensors"
    shutil.copy(os.path.join(BF16, "model-00001-of-00002.safetensors"), source)
    run("quantize", source, tmp_path / "out.safetensors")
    assert "NVFP4/modelopt" in run("inspect", tmp_path / "out.safetensors").stdout
    expect_failure("quantize", source, tmp_path / "out.safetensors", message="pass --force")
    run("quantize", source, tmp_path / "out.safetensors", "--force", "--format",
        "compressed-tensors")
    assert "NVFP4/compressed-tensors" in run("inspect", tmp_path / "out.safetensors").stdout
    os.mkdir(tmp_path / "dir")
    expect_failure("quantize", source, tmp_path / "dir", message="is a directory")


def test_missing_expert_is_refused_not_skipped(tmp_path):
    source = write_bf16_checkpoint(tmp_path / "gap", experts=4, skip_expert=2)
    expect_failure("quantize", source, tmp_path / "out", message="expert 2 is missing")
    assert not (tmp_path / "out").exists()


def test_non_finite_weights_name_the_tensor(tmp_path):
    source = write_bf16_checkpoint(tmp_path / "inf", experts=2, hidden=32, inter=16, layers=1)
    shard = source / "model-00001-of-00001.safetensors"
    raw = bytearray(open(shard, "rb").read())
    tensors = dict(deserialize(bytes(raw)))
    header = 8 + int.from_bytes(raw[:8], "little")
    begin, _ = json.loads(raw[8:header])["model.layers.0.mlp.experts.1.down_proj.weight"][
        "data_offsets"]
    raw[header + begin + 2 * 17: header + begin + 2 * 18] = (0x7F80).to_bytes(2, "little")  # inf
    open(shard, "wb").write(raw)
    assert "model.layers.0.mlp.experts.1.down_proj.weight" in tensors
    expect_failure("quantize", source, tmp_path / "out",
                   message="tensor 'model.layers.0.mlp.experts.1.down_proj.weight': element "
                           "[1, 1] is inf")


# ---- OUT apart from IN ------------------------------------------------------------------------------

def test_outputs_that_overlap_the_input_are_refused(tmp_path):
    source = write_bf16_checkpoint(tmp_path / "in", experts=2, hidden=32, inter=16, layers=1)
    before = snapshot(source)
    os.symlink(source, tmp_path / "link")
    os.link(source / "model-00001-of-00001.safetensors", tmp_path / "hard.safetensors")
    cases = [
        (source / "model.safetensors.index.json", source),      # index of IN's dir, dir as OUT
        (source, tmp_path / "link"),                            # a symlink to IN
        (source, source / ".." / "in"),                         # IN by another spelling
        (source, tmp_path),                                     # OUT holds IN
        (source, source / "quantized"),                         # OUT inside IN
        (source / "model-00001-of-00001.safetensors", tmp_path / "hard.safetensors"),
    ]
    for source_arg, out in cases:
        expect_failure("quantize", source_arg, out, "--force", message="overlaps the input")
    assert snapshot(source) == before


def test_existing_outputs_are_refused_or_replaced_whole(tmp_path):
    out = tmp_path / "out"
    os.mkdir(out)
    run("quantize", BF16, out)  # an empty directory may be used
    reference = snapshot(out)
    (out / "stale.txt").write_text("from an earlier run")
    expect_failure("quantize", BF16, out, message="exists and is not empty; pass --force")
    assert (out / "stale.txt").exists()
    run("quantize", BF16, out, "--force")
    assert snapshot(out) == reference  # replaced whole, never merged into
    assert not [n for n in os.listdir(tmp_path) if n != "out"]  # nothing left beside it


# ---- failures and kills -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def large_input(tmp_path_factory):
    """Large enough that quantize takes a good fraction of a second."""
    base = tmp_path_factory.mktemp("large")
    source = write_bf16_checkpoint(base / "in", experts=32, hidden=512, inter=256, layers=2)
    run("quantize", source, base / "reference")
    return source, snapshot(base / "reference")


def test_runs_killed_at_random_points_never_leave_a_valid_looking_output(tmp_path, large_input):
    source, reference = large_input
    start = time.monotonic()
    run("quantize", source, tmp_path / "timed")
    duration = time.monotonic() - start
    rng = random.Random(7)
    outcomes = set()
    for attempt in range(12):
        out = tmp_path / f"killed{attempt}"
        process = subprocess.Popen([BIN, "quantize", str(source), str(out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, duration * 1.1))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if out.exists():
            assert_valid_checkpoint(out, reference)
            outcomes.add("complete")
        else:
            outcomes.add("absent")
            expect_failure("inspect", out, message="no such file")
    assert "absent" in outcomes, "no kill landed before the end; the test proves nothing"


def file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_file_size_limit_fails_cleanly(tmp_path, large_input):
    source, _ = large_input
    out = tmp_path / "out"
    result = subprocess.run([BIN, "quantize", str(source), str(out)], capture_output=True,
                            text=True, preexec_fn=file_size_limit(3 << 20), timeout=120)
    assert result.returncode != 0
    assert "write failed" in result.stderr and "File too large" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # the private directory went with the failure


def test_a_full_filesystem_fails_cleanly(tmp_path, large_input):
    """quantize onto a 2 MB tmpfs (mounted in a private user and mount namespace): ENOSPC."""
    source, _ = large_input
    mount = tmp_path / "small"
    os.mkdir(mount)
    script = (f"mount -t tmpfs -o size=2m tmpfs {mount} && "
              f"{BIN} quantize {source} {mount}/out; echo rc=$?; ls -A {mount}")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                            text=True, timeout=120)
    if "rc=" not in result.stdout:
        pytest.skip(f"cannot mount a private tmpfs here: {result.stderr.strip()}")
    assert "rc=0" not in result.stdout, result.stdout
    assert "No space left on device" in result.stderr, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("rc="), result.stdout  # empty fs


def test_two_runs_into_one_output_never_mix(tmp_path, large_input):
    source, reference = large_input
    other = write_bf16_checkpoint(tmp_path / "other", experts=32, hidden=512, inter=256, layers=2,
                                  seed=99)
    run("quantize", other, tmp_path / "other_reference")
    other_reference = snapshot(tmp_path / "other_reference")
    for attempt in range(3):
        out = tmp_path / f"shared{attempt}"
        first = subprocess.Popen([BIN, "quantize", str(source), str(out)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        second = subprocess.Popen([BIN, "quantize", str(other), str(out)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        codes = (first.wait(), second.wait())
        assert 0 in codes
        assert snapshot(out) in (reference, other_reference)
        for process, code in zip((first, second), codes):
            if code != 0:
                assert "exists" in process.stderr.read()
