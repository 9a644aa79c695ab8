"""MONAI entry point: ``LoadCTd`` so MONAI pipelines read scans through our one reader.

MONAI's own LoadImaged would re-implement DICOM ordering/rescale differently; this transform
returns channel-first ``MetaTensor``s in canonical RAS with the affine set, which Orientationd,
Spacingd etc. then use as usual.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from models.io.reader import CTImage, load_ct, load_label

__all__ = ["LoadCTd", "ct_to_metatensor"]


def _meta(ct: CTImage, key: str) -> dict[str, Any]:
    """Collate-friendly metadata (numbers, strings, arrays): enough to go back to the source grid."""
    return {
        "filename_or_obj": str(ct.meta.get("path", "")),
        "format": str(ct.meta.get("format", "")),
        "spatial_shape": np.asarray(ct.array.shape),
        # as MONAI's LoadImage(as_closest_canonical=True): the file's own affine, so SaveImage/Invertd
        # can restore the input orientation
        "original_affine": np.asarray(ct.source.affine),
        "source_shape": np.asarray(ct.source.shape),
        "source_axcodes": ct.source.axcodes,
        "space": "RAS",
        "key": key,
    }


def ct_to_metatensor(array: np.ndarray, ct: CTImage, key: str = "image") -> MetaTensor:
    """``[1, i, j, k]`` MetaTensor on ``ct``'s canonical grid."""
    data = torch.as_tensor(np.ascontiguousarray(array)[None])
    return MetaTensor(data, affine=torch.as_tensor(ct.affine, dtype=torch.float64), meta=_meta(ct, key))


class LoadCTd(MapTransform):
    """Load ``keys`` with :func:`load_ct` and ``label_keys`` with :func:`load_label` on the first key's grid.

    Labels keep an integer dtype; images are float32 HU. ``label_names`` (label id -> name) is what a
    DICOM-SEG label's segments and an RTSTRUCT label's ROIs are matched to.
    """

    def __init__(self, keys: KeysCollection, label_keys: Sequence[str] | str = (), series_uid: str | None = None,
                 allow_missing_keys: bool = False, label_names: Mapping[int, str] | None = None) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
        self.series_uid = series_uid
        self.label_names = dict(label_names) if label_names else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first: CTImage | None = None
        for key in self.key_iterator(d):
            ct = load_ct(d[key], series_uid=self.series_uid)
            first = first or ct
            d[key] = ct_to_metatensor(ct.array, ct, str(key))
        for key in self.label_keys:
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"LoadCTd: label key {key!r} not in data")
            if first is None:
                raise ValueError("LoadCTd: label_keys need at least one image key to define the grid")
            d[key] = ct_to_metatensor(load_label(d[key], like=first, names=self.label_names), first, key)
        return d
