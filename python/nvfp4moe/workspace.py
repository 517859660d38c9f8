"""One scratch workspace per device, shared by every layer.

Layers of a model run one after another, so they can share one scratch buffer: each module
reserves the bytes its largest batch needs when it is made (or its token limit grows), and the
device's buffer is the largest reservation so far. DeepSeek-V3's 58 MoE layers at 8192 tokens
need 480 MiB, not 58 times that.

The rule for streams: forwards that share a workspace must not overlap in time. The ops enforce
it for eager calls: they hold a lock while they launch (threads calling one module are
serialized) and make a forward on another stream wait for the workspace's previous stream. A
CUDA graph that captured forwards must be replayed in order with other users of the workspace
(one stream, as engines replay their layers); a graph captured on another stream than the
eager forwards is ordered by the caller.

Growing happens outside CUDA-graph capture only (reserve raises during capture: reserve the
largest batch before capturing). A buffer that is outgrown is kept, not freed, because graphs
captured before may still point at it; release_retired() frees those once no graph does.
"""
import threading

import torch

_lock = threading.Lock()
_buffers = {}  # torch.device -> uint8 tensor
_retired = []  # outgrown buffers that captured graphs may still use


def _key(device):
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def reserve(device, nbytes):
    """Makes the device's workspace hold at least `nbytes` (grows it geometrically, so a rising
    token count costs few reallocations). Raises during CUDA-graph capture if it must grow."""
    device = _key(device)
    nbytes = max(int(nbytes), 1)
    with _lock:
        current = _buffers.get(device)
        if current is not None and current.numel() >= nbytes:
            return current
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"nvfp4moe: the {device} workspace must grow from "
                f"{0 if current is None else current.numel()} to {nbytes} bytes during CUDA-graph "
                "capture; make the layers (or call fused_experts with max_tokens) for the largest "
                "batch before capturing")
        size = nbytes if current is None else max(nbytes, current.numel() * 3 // 2)
        try:
            buffer = torch.empty(size, dtype=torch.uint8, device=device)
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(
                f"nvfp4moe: cannot allocate a {size}-byte workspace on {device}: {error}") from None
        if current is not None and device.type == "cuda":
            _retired.append(current)
        _buffers[device] = buffer
        return buffer


def get(device, nbytes):
    """The device's workspace, which must hold `nbytes` (reserved when the layer was made)."""
    buffer = _buffers.get(_key(device))
    if buffer is None or buffer.numel() < nbytes:
        buffer = reserve(device, nbytes)
    return buffer


def nbytes(device):
    """Bytes of the device's workspace (0 when none was reserved)."""
    buffer = _buffers.get(_key(device))
    return 0 if buffer is None else buffer.numel()


def release_retired():
    """Frees outgrown workspaces. Call it only when no CUDA graph captured before the last growth
    will be replayed."""
    with _lock:
        _retired.clear()


def reset():
    """Drops every workspace (for tests and for processes that unload all layers)."""
    with _lock:
        _buffers.clear()
        _retired.clear()
