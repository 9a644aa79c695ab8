"""The fast path (SDPA attention, cached window bias) is on by default: masks agree with MONAI's fp32 attention.

bf16 autocast is opt-in: on this worst case (a near-tie random model) its masks agree at Dice ~0.987,
below the product's 0.99 bar, so it is only checked not to break the masks (>= 0.97) here.

The model is a real SwinUNETR (feature size 12) whose output bias is centred on the median logits of
this scan, so every class wins on a sizeable part of it and the argmax depends on the image: a
near-tie model, harder for bf16 than a trained one (whose margins are larger).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import SwinUNETR
from segment_helpers import dice, small_phantom, swin_model_dir, write_nifti

from models.inference import Segmenter, SegmentOptions
from models.inference.predict import (
    CPU_STREAMS,
    WindowTally,
    argmax_labels,
    conv_layout,
    predict_probabilities,
    window_streams,
)
from models.inference.preprocess import network_input
from models.inference.segmenter import cpu_has_native_bf16
from models.io.reader import load_ct
from models.modeldir import Preprocessing

SPACING = (4.0, 4.0, 5.0)


@pytest.mark.slow
def test_fast_path_masks_agree_with_fp32(tmp_path: Path) -> None:
    hu, _, affine = small_phantom()
    ct = load_ct(write_nifti(tmp_path / "ct.nii.gz", hu, affine))
    volume = network_input(ct.array, ct.affine, ct.source, Preprocessing(spacing=SPACING, roi=(64, 64, 64)), SPACING)
    sample = volume.as_tensor()[None, :, 10:74, 10:74, :32]  # (1, 1, 64, 64, 32) of this scan
    model = swin_model_dir(tmp_path / "model", names=("liver", "spleen"), roi=64, spacing=SPACING, balance_on=sample)
    masks = {}
    for name, opts in {
        "fp32": SegmentOptions(fast_path=False),
        "sdpa": SegmentOptions(fast_path=True),
        "bf16": SegmentOptions(fast_path=True, bf16=True),
    }.items():
        result = Segmenter.from_model_dir(model, device="cpu", options=opts).segment(ct)
        masks[name] = result.labels
        warned = any("bf16" in w for w in result.warnings)
        assert warned == (opts.bf16 and not cpu_has_native_bf16()), result.warnings  # emulated bf16 is ~10x slower
        assert result.info["precision"] == ("bf16" if opts.bf16 else "fp32")  # report.json says what ran
    ref = masks["fp32"]
    counts = np.bincount(ref.ravel(), minlength=3) / ref.size
    assert counts.min() > 0.05, counts  # every class holds a real share: the test is not trivially passed
    sdpa = [dice(ref == organ, masks["sdpa"] == organ) for organ in (1, 2)]
    bf16 = [dice(ref == organ, masks["bf16"] == organ) for organ in (1, 2)]
    print("vs fp32 Dice: sdpa", sdpa, "bf16", bf16, counts)
    assert np.mean(sdpa) >= 0.99, sdpa
    assert np.mean(bf16) >= 0.97, bf16


def _swin() -> torch.nn.Module:
    torch.manual_seed(0)
    return SwinUNETR(in_channels=1, out_channels=3, feature_size=12, spatial_dims=3).eval()


@pytest.mark.parametrize("sw_batch_size", [2, 4])
def test_window_streams_give_the_probabilities_of_one_stream(sw_batch_size: int) -> None:
    """Three windows: batches of 2 + 1 (the last one too small to split) or one batch of 3 split 2 + 1."""
    net, volume = _swin(), torch.rand(1, 128, 64, 64)
    kwargs = {"device": torch.device("cpu"), "sw_batch_size": sw_batch_size, "overlap": 0.5, "fast_path": True}
    threads = torch.get_num_threads()
    one = predict_probabilities(net, volume, (64, 64, 64), streams=1, **kwargs)
    two = predict_probabilities(net, volume, (64, 64, 64), streams=2, **kwargs)
    torch.testing.assert_close(two, one, atol=1e-5, rtol=0)
    assert torch.get_num_threads() == threads  # the caller's thread count is back


def test_a_region_gives_the_full_pass_probabilities_inside_it_with_the_real_network() -> None:
    """Four windows along x in batches of 3 + 1 over two streams: the region x 30-40 keeps the first two
    (a mixed batch: two windows run, one zero-filled) and skips the last batch entirely."""
    net, volume = _swin(), torch.rand(1, 160, 64, 64)
    kwargs = {"device": torch.device("cpu"), "sw_batch_size": 3, "overlap": 0.5, "fast_path": True, "streams": 2}
    full = predict_probabilities(net, volume, (64, 64, 64), **kwargs)
    tally = WindowTally()
    region = (slice(30, 40), slice(0, 64), slice(0, 64))
    part = predict_probabilities(net, volume, (64, 64, 64), region=region, out_channels=3, tally=tally, **kwargs)
    assert (tally.run, tally.total) == (2, 4)
    torch.testing.assert_close(part[(slice(None), *region)], full[(slice(None), *region)], atol=1e-5, rtol=0)
    assert not torch.allclose(part[:, 100:], full[:, 100:], atol=1e-3)  # outside: skipped windows, not the same


def test_a_window_left_over_by_the_streams_runs_with_all_threads() -> None:
    """Three windows in one batch over two streams: two share the streams, the third gets every thread."""
    seen: list[tuple[int, int]] = []

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((len(x), torch.get_num_threads()))
            return torch.zeros(len(x), 2, *x.shape[2:])

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        predict_probabilities(Recorder(), torch.rand(1, 128, 64, 64), (64, 64, 64), device=torch.device("cpu"),
                              sw_batch_size=3, overlap=0.5, fast_path=True, streams=2)  # fmt: skip
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert sorted(seen) == [(1, 1), (1, 1), (1, 2)], seen


def test_a_failing_window_stream_raises_and_restores_the_thread_count() -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("out of memory in a window")

    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="out of memory in a window"):
        predict_probabilities(Broken(), torch.rand(1, 64, 64, 64), (64, 64, 64), device=torch.device("cpu"),
                              sw_batch_size=2, overlap=0.5, fast_path=True, streams=2)  # fmt: skip
    assert torch.get_num_threads() == threads


def test_streams_only_on_the_cpu_fast_path() -> None:
    assert window_streams(torch.device("cpu"), fast_path=False) == 1  # the fp32 reference stays MONAI's
    assert window_streams(torch.device("cuda"), fast_path=True) == 1
    assert window_streams(torch.device("cpu"), fast_path=True) == min(CPU_STREAMS, torch.get_num_threads())


def test_channels_last_convolutions_on_the_cpu_fast_path_only() -> None:
    """The fast path switches the convolution weights to channels-last, the fp32 reference back; same output."""
    net, volume = _swin(), torch.rand(1, 64, 64, 64)
    kwargs = {"device": torch.device("cpu"), "sw_batch_size": 1, "overlap": 0.0}
    weight = net.encoder1.layer.conv2.conv.weight
    fast = predict_probabilities(net, volume, (64, 64, 64), fast_path=True, **kwargs)
    assert weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()
    assert net.encoder1.layer.conv2.conv.onednn  # single windows on oneDNN (tests/test_onednn_conv.py)
    reference = predict_probabilities(net, volume, (64, 64, 64), fast_path=False, **kwargs)
    assert net.encoder1.layer.conv2.conv.weight.is_contiguous() and not net.encoder1.layer.conv2.conv.onednn
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)
    assert conv_layout(torch.device("cuda"), fast_path=True) == torch.contiguous_format  # GPUs: not measured


def test_argmax_labels_is_the_first_maximum_as_numpy() -> None:
    """Ties (common where probabilities saturate) go to the lowest class id, as numpy's and torch's argmax."""
    scores = torch.randint(0, 3, (14, 20, 30, 40), generator=torch.Generator().manual_seed(0)).float()
    labels = argmax_labels(scores)
    assert labels.dtype == torch.uint8
    np.testing.assert_array_equal(labels.numpy(), scores.numpy().argmax(axis=0))
    with pytest.raises(ValueError, match="257 classes"):
        argmax_labels(torch.zeros(257, 1, 1, 1))
