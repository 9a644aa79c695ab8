"""Scan -> network input, with exactly the transforms the model was trained with.

Why reuse :func:`models.data.transforms.preprocess`: finetuning and pretraining call it, so the same
MONAI ``Spacing`` (bilinear, border padding) and HU window cannot drift apart between training and
inference. Only the spacing may change here (``--fast``).
"""

from __future__ import annotations

import numpy as np
from monai.data import MetaTensor
from monai.transforms.utils import generate_spatial_bounding_box

from models.config import DataConfig
from models.data.transforms import preprocess
from models.io.reader import CTImage, SourceSpace
from models.modeldir import Preprocessing


def inference_spacing(prep: Preprocessing, fast: bool) -> tuple[float, float, float]:
    """The model's spacing, or its ``--fast`` spacing (:attr:`Preprocessing.fast_spacing`)."""
    return prep.fast_spacing if fast else prep.spacing


def network_input(
    hu: np.ndarray,
    affine: np.ndarray,
    source: SourceSpace,
    prep: Preprocessing,
    spacing: tuple[float, float, float],
) -> MetaTensor:
    """(X, Y, Z) HU on a RAS grid -> (1, X', Y', Z') in [0, 1] at ``spacing``.

    The returned tensor's ``affine`` is its voxel-to-world matrix: the label map computed on it is
    resampled back with that matrix, never by assuming how MONAI placed the new grid.
    """
    cfg = DataConfig(spacing=spacing, hu_min=prep.hu_min, hu_max=prep.hu_max)
    view = CTImage(array=hu, affine=affine, source=source)
    return preprocess(view, cfg)


def body_box(volume: MetaTensor) -> tuple[slice, slice, slice]:
    """The box of voxels above the HU window's floor (the body), on a (1, X, Y, Z) network input.

    Exactly MONAI ``CropForeground``'s box (values > 0, no margin), as in the Swin UNETR recipe and the
    exported bundle, so both place their windows identically. Everything outside is air or table below
    the window: the training crops never centred there either. An empty input keeps the whole grid.
    """
    start, end = generate_spatial_bounding_box(volume, select_fn=lambda x: x > 0, allow_smaller=True)
    if any(e <= s for s, e in zip(start, end, strict=True)):
        return tuple(slice(0, int(n)) for n in volume.shape[1:])  # type: ignore[return-value]
    return tuple(slice(int(s), int(e)) for s, e in zip(start, end, strict=True))  # type: ignore[return-value]
