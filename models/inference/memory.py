"""How many sliding windows to push through the network at once, from the memory that is free now.

Why an estimate and not a probe: running trial batches costs a network pass each (seconds on CPU), and
the answer only needs to avoid running out of memory, not to be tight. The estimate was measured with
``ru_maxrss`` on CPU, torch 2.13, MONAI 1.6.1, gradients off (one SwinUNETR forward, fp32, MONAI's
attention): feature size 12 at 64³ 1.7 kB per input voxel, 12 at 96³ 1.3 kB, 24 at 64³ 1.8 kB. Attention
matrices dominate at small feature sizes (the head counts do not shrink with the feature size), so::

    bytes per window  ~= roi voxels * (1600 + 16 * feature_size)      (fp32; bf16 + SDPA needs ~25 % less)

The sliding-window output (one float32 logit volume per class at model resolution, twice with TTA) and
the fast path's cached attention biases (``reserved``, a constant of the model and roi) are set aside
first, then half of what remains is given to windows. CPU batches stop at 2 per window stream
(measured: one stream of two threads is no faster with 4 windows than with 2 and needs twice the memory;
two streams of one thread run 2 windows each, see :data:`models.inference.predict.CPU_STREAMS`), and
streams add windows beyond 2 only within :data:`CPU_WINDOW_BUDGET`, however much RAM is free: at roi 96
that leaves 2 windows (one per stream), as before streams, so a 512 x 512 x 300 scan at the BTCV spacing
needs no more memory than it did. GPU batches stop at 8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import psutil
import torch

CPU_MAX_BATCH = 2
GPU_MAX_BATCH = 8
BYTES_PER_VOXEL_BASE = 1600
BYTES_PER_VOXEL_PER_FEATURE = 16
USABLE_FRACTION = 0.5
CPU_WINDOW_BUDGET = 3.5 * 2**30  # windows in flight on CPU with streams: 4 at roi 64, 2 at roi 96 (feature size 12)


@dataclass(frozen=True)
class BatchChoice:
    """The chosen window batch and the numbers behind it (written to report.json)."""

    sw_batch_size: int
    free_bytes: int
    window_bytes: int
    output_bytes: int
    aggregate_on_device: bool


def window_bytes(roi: tuple[int, int, int], feature_size: int) -> int:
    """Estimated peak memory of one window's forward pass (see the module docstring)."""
    return int(math.prod(roi) * (BYTES_PER_VOXEL_BASE + BYTES_PER_VOXEL_PER_FEATURE * feature_size))


def free_memory(device: torch.device) -> int:
    """Bytes free now: ``torch.cuda.mem_get_info`` on a GPU, ``psutil`` available RAM on CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def choose_batch(
    roi: tuple[int, int, int],
    feature_size: int,
    out_channels: int,
    volume_shape: tuple[int, int, int],
    device: torch.device,
    tta: bool = False,
    requested: int | None = None,
    reserved: int = 0,
    streams: int = 1,
) -> BatchChoice:
    """Window batch size (>= 1) and whether the logit volume fits on ``device`` beside the windows.

    ``requested`` overrides the estimate (it is still reported). ``reserved``: bytes the model holds
    besides its weights (:func:`models.inference.window_attention.window_bias_bytes` on the fast path;
    set aside even when a previous scan already allocated them, which errs on the safe side). On a GPU
    the per-class logit volume is accumulated on the device when it fits, else in host memory (MONAI's
    ``device`` argument). ``streams``: threads that share each batch on CPU, :data:`CPU_MAX_BATCH` each.
    """
    free = free_memory(device)
    per_window = window_bytes(roi, feature_size)
    output = out_channels * math.prod(volume_shape) * 4 * (2 if tta else 1)
    aggregate_on_device = True
    usable = USABLE_FRACTION * max(0, free - reserved)
    budget = usable - output
    if device.type == "cuda" and budget < per_window:
        aggregate_on_device = False  # keep the logits in RAM; the GPU only holds windows
        budget = usable
    if device.type == "cuda":
        cap = GPU_MAX_BATCH
    else:
        # streams add windows only within the budget; a single stream keeps its 2
        cap = min(CPU_MAX_BATCH * max(1, streams), max(CPU_MAX_BATCH, int(CPU_WINDOW_BUDGET // per_window)))
    batch = requested if requested is not None else max(1, min(cap, int(budget // per_window)))
    return BatchChoice(
        sw_batch_size=int(batch),
        free_bytes=free,
        window_bytes=per_window,
        output_bytes=int(output),
        aggregate_on_device=aggregate_on_device,
    )
