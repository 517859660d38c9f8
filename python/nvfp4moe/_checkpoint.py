"""Reading one MoE layer of a ModelOpt NVFP4 checkpoint with the official safetensors reader."""
import json
import os

import torch
from safetensors import safe_open

_PROJECTIONS = {"hf": ("gate_proj", "up_proj", "down_proj"), "deepseek": ("w1", "w3", "w2")}


def _files(path):
    """tensor name -> file, for a .safetensors file, an index .json or a directory."""
    if os.path.isdir(path):
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            path = index
        else:
            files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
            if not files:
                raise FileNotFoundError(f"{path}: no .safetensors files and no index")
            names = {}
            for f in files:
                with safe_open(os.path.join(path, f), framework="pt") as handle:
                    names.update({k: os.path.join(path, f) for k in handle.keys()})
            return names
    if path.endswith(".json"):
        with open(path) as f:
            weight_map = json.load(f)["weight_map"]
        base = os.path.dirname(path)
        for shard in set(weight_map.values()):
            if os.path.basename(shard) != shard:
                raise ValueError(f"{path}: shard name {shard!r} is not a plain file name")
        return {name: os.path.join(base, shard) for name, shard in weight_map.items()}
    with safe_open(path, framework="pt") as handle:
        return {k: path for k in handle.keys()}


def load_moe_layer(path, layer, *, prefix, naming, first_expert, num_experts, device):
    if naming not in _PROJECTIONS:
        raise ValueError(f"nvfp4moe: naming {naming!r}, expected 'hf' or 'deepseek'")
    gate, up, down = _PROJECTIONS[naming]
    files = _files(path)
    base = prefix.format(layer=layer)
    total = 0
    while f"{base}{total}.{gate}.weight" in files:
        total += 1
    if total == 0:
        raise ValueError(f"{path}: no MoE layer {layer}: {base}0.{gate}.weight is missing")
    count = total - first_expert if num_experts is None else num_experts
    if first_expert < 0 or count < 1 or first_expert + count > total:
        raise ValueError(f"{path}: experts [{first_expert}, {first_expert + count}) are outside "
                         f"the layer's {total}")
    handles = {}

    def get(name):
        if name not in files:
            raise ValueError(f"{path}: missing tensor {name!r}")
        if files[name] not in handles:
            handles[files[name]] = safe_open(files[name], framework="pt", device="cpu")
        return handles[files[name]].get_tensor(name)

    def stack(projection, suffix):
        return torch.stack([get(f"{base}{e}.{projection}.{suffix}")
                            for e in range(first_expert, first_expert + count)])

    def scalars(projection, suffix):
        return stack(projection, suffix).reshape(count).to(torch.float32)

    weights = {
        "w13_weight": torch.cat([stack(gate, "weight"), stack(up, "weight")], dim=1),
        "w13_weight_scale": torch.cat([stack(gate, "weight_scale"), stack(up, "weight_scale")],
                                      dim=1).view(torch.uint8),
        "w13_weight_scale_2": torch.stack([scalars(gate, "weight_scale_2"),
                                           scalars(up, "weight_scale_2")], dim=1),
        "w2_weight": stack(down, "weight"),
        "w2_weight_scale": stack(down, "weight_scale").view(torch.uint8),
        "w2_weight_scale_2": scalars(down, "weight_scale_2"),
    }
    if f"{base}{first_expert}.{gate}.input_scale" in files:
        weights["w13_input_scale"] = torch.stack([scalars(gate, "input_scale"),
                                                  scalars(up, "input_scale")], dim=1)
        weights["w2_input_scale"] = scalars(down, "input_scale")
    weights = {k: v.contiguous().to(device) for k, v in weights.items()}
    return {"weights": weights, "num_experts": total}
