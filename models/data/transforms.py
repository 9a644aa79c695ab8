"""Preprocessing shared by pretraining, finetuning and inference, built from MONAI transforms.

A scan goes: our reader (canonical RAS, HU) → ``Spacing`` → HU window to [0, 1] with clipping.
The result is cached once per scan (see :mod:`models.data.cache`); the per-step views (whole-scan
resize to a cube, or a random crop) are cheap and drawn from a seed so that runs resume exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    RandomizableTransform,
    RandSpatialCrop,
    Resize,
    ScaleIntensityRange,
    Spacing,
    SpatialPad,
)

from models.config import DataConfig
from models.io.reader import CTImage


def preprocess(ct: CTImage, cfg: DataConfig) -> MetaTensor:
    """HU volume on the reader's RAS grid → (1, X, Y, Z) float32 in [0, 1] at ``cfg.spacing``."""
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(ct.array, dtype=np.float32))[None], affine=ct.affine)
    pipeline = Compose(
        [
            Spacing(pixdim=cfg.spacing, mode="bilinear", padding_mode="border"),
            ScaleIntensityRange(a_min=cfg.hu_min, a_max=cfg.hu_max, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    return pipeline(image)


def make_view(volume: torch.Tensor, size: int, mode: str, rng: np.random.Generator) -> torch.Tensor:
    """One network input of edge ``size`` from a preprocessed (1, X, Y, Z) volume.

    ``resize``: the whole scan resized to a cube (the paper; anatomy keeps its relative layout).
    ``crop``: a random ``size``³ crop, padded with air where the scan is smaller.
    """
    volume = torch.as_tensor(volume, dtype=torch.float32)
    if mode == "resize":
        out = Resize(spatial_size=(size, size, size), mode="trilinear", anti_aliasing=False)(volume)
    elif mode == "crop":
        padded = SpatialPad(spatial_size=(size, size, size), mode="constant")(volume)
        cropper = RandSpatialCrop(roi_size=(size, size, size), random_size=False)
        cropper.set_random_state(seed=int(rng.integers(2**31)))
        out = cropper(padded)
    else:
        raise ValueError(f"unknown view mode {mode!r}: use 'resize' or 'crop'")
    return torch.as_tensor(out).float().contiguous()


def intensity_jitter(x: torch.Tensor, amplitude: float, rng: np.random.Generator) -> torch.Tensor:
    """Light augmentation that keeps anatomy in place (flips or rotations would break order prediction)."""
    if amplitude <= 0:
        return x
    scale = 1.0 + rng.uniform(-amplitude, amplitude)
    shift = rng.uniform(-amplitude, amplitude) * 0.5
    return (x * scale + shift).clamp(0.0, 1.0)


# Sliding windows pad a scan thinner than the window (a 20-slice series is 10 slices at 4 mm) by repeating
# its edge slices: the network then sees anatomy that goes on, as in every training crop, instead of the
# air-like blank of MONAI's default constant padding. Used by inference, validation and exported bundles.
THIN_SCAN_PADDING = "replicate"


class RandSlabd(MapTransform, RandomizableTransform):
    """Keep a random slab of slices along one axis and repeat its edge slices over the rest (labels too).

    Why: partial scans are common, and inference pads what is thinner than the window by repeating the
    edge slices (:data:`THIN_SCAN_PADDING`). A model that only ever saw windows full of varying anatomy
    meets a thin slab padded that way for the first time at inference; this crop shows it in training,
    with labels repeated like the image, so every target still matches its voxels. Off by default
    (``data.slab_prob``: the BTCV recipe has no such augmentation).
    """

    def __init__(self, image_key: str, label_key: str, prob: float, min_slices: int = 4, axis: int = 2) -> None:
        MapTransform.__init__(self, [image_key, label_key])
        RandomizableTransform.__init__(self, prob)
        self.image_key, self.label_key = image_key, label_key
        self.min_slices, self.axis = min_slices, axis
        self._slab = (0, 0)

    def randomize(self, size: int) -> None:  # type: ignore[override]
        super().randomize(None)
        thickness = int(self.R.randint(min(self.min_slices, size), size + 1))
        start = int(self.R.randint(0, size - thickness + 1))
        self._slab = (start, start + thickness)

    def __call__(self, data: dict) -> dict:  # type: ignore[override]
        d = dict(data)
        size = d[self.image_key].shape[1 + self.axis]
        self.randomize(size)
        if not self._do_transform:
            return d
        start, stop = self._slab
        source = torch.arange(size).clamp(start, stop - 1)  # slice i shows slab slice clamp(i)
        for key in (self.image_key, self.label_key):
            d[key] = d[key].index_select(1 + self.axis, source.to(d[key].device))
        return d
