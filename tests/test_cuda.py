"""The inference path on a GPU gives the CPU's answer: probabilities, windows near a region, whole masks.

The tests run on ``cuda`` (skipped without a GPU: bench/gpu/run.sh runs them on a lent GPU machine). The
mask test also runs on ``cpu`` as a control: it cannot fail there (the CPU against itself), but it keeps
the test's own code exercised between GPU sessions. TF32 is switched off: it would round the convolutions
to 10 bits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import SwinUNETR
from segment_helpers import dice, small_phantom, swin_model_dir, write_nifti

from models.inference import Segmenter, SegmentOptions
from models.inference.predict import WindowTally, predict_probabilities
from models.inference.preprocess import network_input
from models.io.reader import load_ct
from models.modeldir import Preprocessing

NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_CUDA)]
ROI = (64, 64, 64)
SPACING = (4.0, 4.0, 5.0)


@pytest.fixture(autouse=True)
def no_tf32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _swin() -> torch.nn.Module:
    torch.manual_seed(0)
    return SwinUNETR(in_channels=1, out_channels=3, feature_size=12, spatial_dims=3).eval()


@NO_CUDA  # its CPU counterpart is tests/test_segment_fastpath.py's region test
@pytest.mark.parametrize(("fast_path", "aggregate_on_device"), [(True, True), (True, False), (False, True)])
def test_probabilities_and_a_region_match_the_cpu(fast_path: bool, aggregate_on_device: bool) -> None:
    """Four windows along x in batches of 3 + 1; the region x 30-40 runs two of them (a mixed batch)."""
    device = "cuda"
    volume = torch.rand(1, 160, 64, 64)
    kwargs = {"sw_batch_size": 3, "overlap": 0.5, "fast_path": fast_path}
    cpu = predict_probabilities(_swin(), volume, ROI, device=torch.device("cpu"), **kwargs)
    net = _swin().to(device)
    on_device = predict_probabilities(net, volume, ROI, device=torch.device(device),
                                      aggregate_on_device=aggregate_on_device, **kwargs)  # fmt: skip
    assert on_device.device.type == "cpu" and on_device.dtype == torch.float32
    torch.testing.assert_close(on_device, cpu, atol=1e-4, rtol=0)
    tally = WindowTally()
    region = (slice(30, 40), slice(0, 64), slice(0, 64))
    part = predict_probabilities(net, volume, ROI, device=torch.device(device), region=region, out_channels=3,
                                 tally=tally, aggregate_on_device=aggregate_on_device, **kwargs)  # fmt: skip
    assert (tally.run, tally.total) == (2, 4)
    torch.testing.assert_close(part[(slice(None), *region)], cpu[(slice(None), *region)], atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_segmenter_masks_match_the_cpu(device: str, tmp_path: Path) -> None:
    """A near-tie model (every class wins on part of the scan): the hardest case for rounding differences."""
    hu, _, affine = small_phantom()
    path = write_nifti(tmp_path / "ct.nii.gz", hu, affine)
    ct = load_ct(path)
    volume = network_input(ct.array, ct.affine, ct.source, Preprocessing(spacing=SPACING, roi=ROI), SPACING)
    sample = volume.as_tensor()[None, :, 10:74, 10:74, :32]
    model = swin_model_dir(tmp_path / "model", names=("liver", "spleen"), roi=64, spacing=SPACING, balance_on=sample)
    for options in (SegmentOptions(), SegmentOptions(tta=True), SegmentOptions(organs=["spleen"]),
                    SegmentOptions(fast=True)):  # fmt: skip
        cpu = Segmenter.from_model_dir(model, device="cpu", options=options).segment(path)
        result = Segmenter.from_model_dir(model, device=device, options=options).segment(path)
        assert result.info["device"].startswith(device), result.info["device"]
        assert result.labels.shape == hu.shape
        organs = [i for i in np.unique(cpu.labels) if i]
        assert organs, "the control mask holds organs"
        agreement = [dice(cpu.labels == i, result.labels == i) for i in organs]
        assert np.mean(agreement) >= 0.99, (options, agreement)
    bf16 = Segmenter.from_model_dir(model, device=device, options=SegmentOptions(bf16=True)).segment(path)
    reference = Segmenter.from_model_dir(model, device="cpu").segment(path)
    assert np.mean([dice(reference.labels == i, bf16.labels == i) for i in (1, 2)]) >= 0.97  # as on the CPU
