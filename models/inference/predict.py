"""Network input -> class probabilities and label map at model resolution: sliding window, optional TTA.

Why at model resolution: the per-class probabilities exist only there (e.g. 14 x 270 x 270 x 150 floats
for a 512 x 512 x 300 CT at 1.5 x 1.5 x 2 mm); the scan's grid gets a uint8 label map
(:mod:`models.inference.resample`), so full-resolution float probabilities of every class never exist
(the cost users report for MONAI's "invert the transforms, then argmax" route).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from models.data.spacing import Box
from models.data.transforms import THIN_SCAN_PADDING
from models.inference.channels_last_norm import enable_channels_last_norm
from models.inference.onednn_conv import enable_onednn_convolutions
from models.inference.threads import torch_thread_pool
from models.inference.window_attention import enable_fast_attention

# identity + one mirror per spatial axis of a (B, C, X, Y, Z) tensor; nnU-Net's 8 combinations cost 2x more
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))

# Window streams on CPU: each window batch is split between this many threads, each running its share with
# an equal share of the intra-op threads. Why: Swin UNETR's operators are small (343-token windows, 12 to 48
# channels), so two threads on one window keep each other waiting; two threads on two windows each do not.
# Measured on 2 cores (cpu-demo model, 64³ windows, fast path): 0.86 s per two windows against 1.08 s for one
# stream of two threads (bench/network_profile.py); the real sample's network pass, 8.3 s against 10.6 s.
# More streams were not measured, so at most two.
CPU_STREAMS = 2


def window_streams(device: torch.device, fast_path: bool = True) -> int:
    """How many threads share a window batch: :data:`CPU_STREAMS` on a CPU with that many threads, else 1.

    The fp32 reference path (``fast_path`` off) keeps MONAI's single stream, as does a GPU.
    """
    if device.type != "cpu" or not fast_path:
        return 1
    return max(1, min(CPU_STREAMS, torch.get_num_threads()))


def conv_layout(device: torch.device, fast_path: bool) -> torch.memory_format:
    """The memory format of the convolution weights: channels-last on the CPU fast path, else PyTorch's default.

    Why: oneDNN's 3D convolutions run on channels-last tensors without reordering them first; with the
    weights channels-last, every convolution's output is too. Measured on 2 cores (cpu-demo model, 64³
    windows, fast path, ``bench/network_profile.py``): the convolutions' share of a forward pass falls from
    about 33 % to 21 %, but copies and reshapes grow from 4 % to 15-19 %, so the whole forward is only
    1.0-1.03x faster on a quiet machine (two runs; 10 % with the other core busy). Outputs differ by float
    rounding only (4e-6). GPUs (not measured) and the fp32 reference path keep the default.
    """
    return torch.channels_last_3d if device.type == "cpu" and fast_path else torch.contiguous_format


@contextlib.contextmanager
def stream_windows(forward: Callable[[torch.Tensor], torch.Tensor], streams: int) -> Iterator[Callable]:
    """``forward`` split over ``streams`` threads by window (one stream: ``forward`` itself).

    Each worker thread gets an equal share of the intra-op threads (:func:`torch_thread_pool`) and its own
    inference mode (a per-thread switch). The windows left over when a batch does not divide evenly (a
    lone coarse window, the last of an odd batch) run after the others on the calling thread with all
    the intra-op threads: on one stream's share they would keep the other cores idle (measured on 2
    cores, the large CT's one ``--fast`` window: network 0.84 -> 0.44 s, medians of 3 runs).
    """
    if streams <= 1:
        yield forward
        return
    threads = torch.get_num_threads()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return forward(x)

    def run_rest(x: torch.Tensor) -> torch.Tensor:
        share = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return forward(x)
        finally:
            torch.set_num_threads(share)

    with torch_thread_pool(streams) as pool:

        def run_windows(x: torch.Tensor) -> torch.Tensor:
            even = len(x) - len(x) % streams
            parts = list(pool.map(run, x[:even].tensor_split(streams))) if even else []
            if even < len(x):
                parts.append(run_rest(x[even:]))
            return torch.cat(parts)

        yield run_windows


@dataclass
class WindowTally:
    """Sliding windows that ran, of all a full pass places (``region`` skips those that miss it)."""

    run: int = 0
    total: int = 0


def touches(window: Sequence[slice], region: Box) -> bool:
    """Whether a window's spatial slices overlap ``region`` on every axis."""
    return all(w.start < r.stop and r.start < w.stop for w, r in zip(window, region, strict=True))


def window_region(region: Box | None, shape: Sequence[int], roi: Sequence[int], flipped: Sequence[int]) -> Box:
    """``region`` of a (X, Y, Z) volume in the coordinates MONAI's windows use on it.

    MONAI pads an axis shorter than the window evenly on both sides, and a mirrored pass (TTA) sees the
    volume flipped along ``flipped`` (tensor dims 2-4). No region: the whole volume.
    """
    out = []
    for axis, n in enumerate(shape):
        r = region[axis] if region is not None else slice(0, n)
        if axis + 2 in flipped:
            r = slice(n - r.stop, n - r.start)
        shift = max(roi[axis] - n, 0) // 2
        out.append(slice(r.start + shift, r.stop + shift))
    return (out[0], out[1], out[2])


def windows_in(
    run_windows: Callable[[torch.Tensor], torch.Tensor], region: Box, out_channels: int | None, tally: WindowTally
) -> Callable[[torch.Tensor, list], torch.Tensor]:
    """A MONAI ``with_coord`` predictor that runs only the windows touching ``region``; the rest get zero logits.

    Why this is exact inside the region: every window that covers a voxel of it touches it, so each such
    voxel blends the very windows a full pass blends there (zero logits elsewhere only dilute voxels
    outside, which the caller discards).
    """

    def predictor(x: torch.Tensor, coords: list) -> torch.Tensor:
        keep = [touches(c[2:], region) for c in coords]
        tally.total += len(keep)
        tally.run += sum(keep)
        if all(keep):
            return run_windows(x)
        if out_channels is None:
            raise ValueError("out_channels is needed to skip windows outside a region")
        out = x.new_zeros((len(keep), out_channels, *x.shape[2:]))
        if any(keep):
            index = torch.tensor([i for i, k in enumerate(keep) if k], device=x.device)
            out[index] = run_windows(x[index])
        return out

    return predictor


@contextlib.contextmanager
def _precision(device: torch.device, bf16: bool) -> Iterator[None]:
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        yield


def predict_probabilities(
    network: nn.Module,
    volume: torch.Tensor,
    roi: tuple[int, int, int],
    *,
    device: torch.device,
    sw_batch_size: int,
    overlap: float,
    fast_path: bool,
    bf16: bool = False,
    tta: bool = False,
    aggregate_on_device: bool = True,
    streams: int = 1,
    region: Box | None = None,
    out_channels: int | None = None,
    tally: WindowTally | None = None,
) -> torch.Tensor:
    """(1, X, Y, Z) preprocessed volume -> (C, X, Y, Z) float32 class probabilities on the CPU.

    Logits are blended with gaussian weights (the Swin UNETR protocol), then softmaxed. With ``tta`` the
    softmax of each mirrored pass is mirrored back and averaged. Gradients are off, so SDPA attention with
    a cached bias (:mod:`models.inference.window_attention`) applies when ``fast_path`` switches it on
    (MONAI's default attention otherwise); ``bf16`` adds bf16 autocast (opt-in: its masks agree with fp32
    at mean Dice 0.98-0.99 only, see :mod:`models.inference.options`); logits are blended in fp32 either way.
    ``streams``: split each window batch over that many threads (:func:`window_streams`).
    ``region``: run only the windows that touch this box of the volume (needs ``out_channels``); the
    probabilities are exact inside it, meaningless outside. ``tally`` counts the windows run and placed.
    """
    enable_fast_attention(network, fast_path)
    enable_onednn_convolutions(network, fast_path and device.type == "cpu")
    layout = conv_layout(device, fast_path)
    network.to(memory_format=layout)
    enable_channels_last_norm(network, layout == torch.channels_last_3d)
    inferer = SlidingWindowInferer(
        roi_size=roi,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        mode="gaussian",
        padding_mode=THIN_SCAN_PADDING,
        sw_device=device,
        device=device if aggregate_on_device else torch.device("cpu"),
        progress=False,
        with_coord=True,
    )
    tally = tally if tally is not None else WindowTally()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with _precision(device, bf16):
            return network(x).float()

    x = torch.as_tensor(volume, dtype=torch.float32).unsqueeze(0).to(device)  # plain tensor, (1, 1, X, Y, Z)
    with torch.inference_mode(), stream_windows(forward, streams) as run_windows:
        probs: torch.Tensor | None = None
        for dims in TTA_FLIPS if tta else ((),):
            xi = torch.flip(x, dims) if dims else x
            window_box = window_region(region, x.shape[2:], roi, dims)
            p = torch.softmax(_run(inferer, xi, windows_in(run_windows, window_box, out_channels, tally)), dim=1)
            p = torch.flip(p, dims) if dims else p
            probs = p if probs is None else probs.add_(p)
            del p
        assert probs is not None
        if tta:
            probs.div_(len(TTA_FLIPS))
        return probs[0].cpu()


def predict_labels(network: nn.Module, volume: torch.Tensor, roi: tuple[int, int, int], **kwargs) -> torch.Tensor:
    """(1, X, Y, Z) preprocessed volume -> (X, Y, Z) uint8 label map (argmax of :func:`predict_probabilities`)."""
    return argmax_labels(predict_probabilities(network, volume, roi, **kwargs))


def _run(inferer: SlidingWindowInferer, x: torch.Tensor, forward: Callable[[torch.Tensor, list], torch.Tensor]
         ) -> torch.Tensor:  # fmt: skip
    out = inferer(x, forward)
    return torch.as_tensor(out)


def argmax_labels(scores: torch.Tensor) -> torch.Tensor:
    """(C, X, Y, Z) -> (X, Y, Z) uint8 (C <= 256 labels): the first class with the highest score.

    ``max(dim=0).indices`` rather than ``argmax(dim=0)``: the same first-maximum indices, but torch's CPU
    argmax over the outer dimension of (14, 120, 120, 75) probabilities takes 0.18 s, its max 0.03 s.
    """
    if scores.shape[0] > 256:
        raise ValueError(f"{scores.shape[0]} classes do not fit a uint8 label map")
    return scores.max(dim=0).indices.to(torch.uint8)
