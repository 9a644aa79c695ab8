"""Preprocessing shared by pretraining, finetuning and inference, built from MONAI transforms.

A scan goes: our reader (canonical RAS, HU) → anti-aliasing blur where the grid gets coarser →
``Spacing`` → HU window to [0, 1] with clipping.
The result is cached once per scan (see :mod:`models.data.cache`); the per-step views (whole-scan
resize to a cube, or a random crop) are cheap and drawn from a seed so that runs resume exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    MapTransform,
    RandomizableTransform,
    RandSpatialCrop,
    Resize,
    ScaleIntensityRange,
    Spacing,
    SpatialPad,
)
from scipy import ndimage

from models.config import DataConfig
from models.data.spacing import anti_alias_sigma, resample_anti_aliased
from models.io.reader import CTImage

# The same blur as a MONAI bundle expression (Lambdad on the image, after Orientationd), so an exported
# bundle preprocesses exactly like `asa segment`. "{target}" is the model's spacing.
ANTI_ALIAS_EXPRESSION = (
    "$lambda x: x.copy_(torch.as_tensor(ndimage.gaussian_filter(x.numpy(), [0.0] + "
    "[max(0.0, (t / float(s) - 1.0) / 2.0) for s, t in zip(x.pixdim.tolist(), {target})], mode='nearest'), "
    "dtype=x.dtype))"
)


def anti_alias_array(array: np.ndarray, source: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """A (X, Y, Z) volume at ``source`` spacing blurred per :func:`anti_alias_sigma` (itself if no blur).

    Edges repeat their own voxels (``nearest``), as thin scans are padded (:data:`THIN_SCAN_PADDING`): a
    20-slice series must not fade into the air beyond its first and last slice.
    """
    sigma = anti_alias_sigma(source, target)
    if max(sigma) == 0.0:
        return array
    return ndimage.gaussian_filter(np.asarray(array, dtype=np.float32), sigma, mode="nearest")


def anti_alias(image: MetaTensor, target: Sequence[float]) -> MetaTensor:
    """(C, X, Y, Z) MetaTensor blurred channel by channel before resampling to ``target`` (meta kept)."""
    spacing = image.pixdim.tolist()
    if max(anti_alias_sigma(spacing, target)) == 0.0:
        return image
    blurred = np.stack([anti_alias_array(channel, spacing, target) for channel in image.numpy()])
    return image.clone().copy_(torch.as_tensor(blurred, dtype=image.dtype))


def preprocess(ct: CTImage, cfg: DataConfig, anti_aliased: bool = False) -> MetaTensor:
    """HU volume on the reader's RAS grid → (1, X, Y, Z) float32 in [0, 1] at ``cfg.spacing``.

    ``anti_aliased``: ``ct.array`` is already blurred for
    this spacing (or must not be): interpolate only. The blur and ``Spacing`` run as one separable product
    (:mod:`models.data.spacing`); a grid whose axes are not shared falls back to scipy and MONAI.
    """
    window = ScaleIntensityRange(a_min=cfg.hu_min, a_max=cfg.hu_max, b_min=0.0, b_max=1.0, clip=True)
    fused = resample_anti_aliased(ct.array, ct.affine, cfg.spacing, blur=not anti_aliased)
    if fused is not None:
        values, affine = fused
        return window(MetaTensor(torch.from_numpy(values)[None], affine=torch.from_numpy(affine)))
    hu = ct.array if anti_aliased else anti_alias_array(ct.array, ct.spacing, cfg.spacing)
    affine = ct.affine
    # any memory layout will do (the reader keeps NIfTI's Fortran order): copying into C order would
    # transpose the volume in memory, seconds on a clinical-size scan, for no change in the result
    image = MetaTensor(torch.from_numpy(np.asarray(hu, dtype=np.float32))[None], affine=affine)
    return window(Spacing(pixdim=cfg.spacing, mode="bilinear", padding_mode="border")(image))


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


class RandContrastPhased(MapTransform, RandomizableTransform):
    """Simulate an intravenous contrast phase: raise each organ's intensity by its own typical enhancement.

    Why: a model finetuned on native-phase scans meets contrast-enhanced ones (and the reverse) in every
    hospital; a global intensity shift cannot imitate that, since contrast brightens organs and vessels but
    not fat, muscle, bone or bile. One bolus strength ``t ~ U(0, 1)`` is drawn per call (all organs enhance
    together, as in a real phase) and organ ``k``'s voxels gain ``t * offsets[k]``; the result is clipped to
    [0, 1] as the HU window would. ``offsets`` are in the image's units (HU / window width after
    ``ScaleIntensityRange``); labels not listed are unchanged.
    """

    def __init__(self, image_key: str, label_key: str, offsets: dict[int, float], prob: float) -> None:
        MapTransform.__init__(self, [image_key, label_key])
        RandomizableTransform.__init__(self, prob)
        self.image_key, self.label_key = image_key, label_key
        top = max(offsets, default=0)
        self._table = torch.zeros(max(top + 1, 256))
        for label, offset in offsets.items():
            self._table[label] = offset
        self._active = any(offset != 0 for offset in offsets.values())
        self._strength = 0.0

    def randomize(self, data: object = None) -> None:  # type: ignore[override]
        super().randomize(None)
        self._strength = float(self.R.uniform(0.0, 1.0))

    def __call__(self, data: dict) -> dict:  # type: ignore[override]
        d = dict(data)
        self.randomize()
        if not self._do_transform or not self._active:
            return d
        image, label = d[self.image_key], d[self.label_key]
        rise = self._table.to(image.device)[torch.as_tensor(label).long().clamp(0, len(self._table) - 1)]
        d[self.image_key] = (image + self._strength * rise).clamp(0.0, 1.0)
        return d
