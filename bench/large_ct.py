"""A clinical-size CT with real anatomy: the real sample resampled to 512 x 512 x 300, stored LPS.

Why: speed and memory need a scan of the size hospitals produce (512 x 512 in-plane, hundreds of slices),
and mask agreement needs anatomy the model recognises (on a synthetic cylinder a model trained on CT sees
noise and its near-tied labels flip with any change). The 3 mm ``example_ct.nii.gz`` is interpolated
(trilinear) to 0.72 mm in-plane and 1.12 mm slices over its own field of view, padded with air to a square
512 x 512 field, given 15 HU of Gaussian noise (thin-slice CT is noisy) and stored as int16 with the axes
flipped to LPS, as most DICOM-to-NIfTI conversions store them.

    python bench/large_ct.py OUT.nii.gz
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

SIZE = (512, 512, 300)
NOISE_HU = 15.0


def make_large_ct(source: Path, out: Path, size: tuple[int, int, int] = SIZE, seed: int = 0) -> Path:
    """Write ``source`` resampled onto a ``size`` grid with square in-plane voxels (see the module doc)."""
    from models.io.reader import load_ct

    ct = load_ct(source)  # canonical RAS, HU
    extent = np.array(ct.array.shape) * np.array(ct.spacing)
    inplane = max(extent[0], extent[1]) / size[0]
    spacing = np.array([inplane, inplane, extent[2] / size[2]])
    inner = [min(size[a], round(extent[a] / spacing[a])) for a in range(3)]
    volume = torch.from_numpy(ct.array).float()[None, None]
    fine = F.interpolate(volume, size=inner, mode="trilinear", align_corners=False)[0, 0].numpy()
    pad = [(size[a] - inner[a]) // 2 for a in range(3)]
    data = np.full(size, -1024.0, dtype=np.float32)
    data[pad[0] : pad[0] + inner[0], pad[1] : pad[1] + inner[1], pad[2] : pad[2] + inner[2]] = fine
    data += np.random.default_rng(seed).normal(0.0, NOISE_HU, size=size).astype(np.float32)
    # voxel i of the fine grid (i - pad) sits at source index (i - pad + 0.5) * n / inner - 0.5 (align_corners=False)
    scale = np.array(ct.array.shape) / np.array(inner)
    to_source = np.eye(4)
    to_source[:3, :3] = np.diag(scale)
    to_source[:3, 3] = (0.5 - np.array(pad)) * scale - 0.5
    affine = ct.affine @ to_source
    # store LPS: flip the first two axes
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = size[0] - 1, size[1] - 1
    lps = np.ascontiguousarray(data[::-1, ::-1, :].round().clip(-1024, 3071).astype(np.int16))
    img = nib.Nifti1Image(lps, affine @ flip)
    img.set_qform(affine @ flip, code=1)
    img.set_sform(affine @ flip, code=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    return out


if __name__ == "__main__":
    from models.data.sample import fetch_sample_data

    print(make_large_ct(fetch_sample_data() / "example_ct.nii.gz", Path(sys.argv[1])))
