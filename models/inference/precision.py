"""Which precision a segmentation run uses: bf16 autocast where the device runs bf16 natively, else fp32.

Why automatic: on a CPU with AMX or AVX512-BF16 (Intel Sapphire Rapids and newer, AMD Zen 4 and newer) and
on a GPU with bf16 units, bf16 convolutions are several times faster than fp32 (the network pass of the
cpu-demo model ~1.5x end to end, ``bench/network_profile.py``), and a trained model's masks agree with fp32
at Dice >= 0.99 (``bench/inference.py``); nnU-Net and TotalSegmentator likewise run autocast by default.
Where bf16 is emulated (AVX2-only CPUs) it is ~10x slower than fp32, so there it stays off. ``--no-bf16``
(``SegmentOptions(bf16=False)``) gives plain fp32 everywhere, as does the fp32 reference path
(``fast_path=False``, MONAI's own attention).
"""

from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU; without it bf16 autocast is emulated and far slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (not by emulation)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_native_bf16()


def use_bf16(requested: bool | None, device: torch.device, fast_path: bool = True) -> bool:
    """The run's precision: ``requested`` when given, else bf16 on the fast path where ``device`` has it natively."""
    if requested is not None:
        return requested
    return fast_path and native_bf16(device)
