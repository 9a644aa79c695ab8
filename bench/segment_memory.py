"""Peak memory and time of ``asa segment`` on a large CT: 512 x 512 x 300 voxels (or more), CPU, one JSON line out.

Why a script and not a test: the figure is a property of the whole process (peak RSS), it takes minutes
on two cores, and it only needs re-measuring when the inference pipeline changes. The scan is synthetic
(a water cylinder with a few denser blobs, stored LPS like most DICOM conversions); the model is a
feature-size-12 SwinUNETR with the 14 BTCV labels and random weights (memory does not depend on them).

    python bench/segment_memory.py [--workdir /tmp/segbench] [--roi 96] [--overlap 0.25] [--fast] [--slices 300]

``--slices 900`` gives the long scans (chest-abdomen-pelvis, 512 x 512 x 800 and more) on which other
tools' users report running out of memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

SHAPE = (512, 512, 300)  # --slices replaces the last
SPACING = (0.7, 0.7, 1.0)


def make_scan(path: Path, shape: tuple[int, int, int] = SHAPE) -> None:
    """A 512 x 512 x N int16 LPS NIfTI (built slab by slab to keep this script's own memory small)."""
    x, y = np.meshgrid(np.arange(shape[0]) - 256, np.arange(shape[1]) - 256, indexing="ij")
    body = (x / 230.0) ** 2 + (y / 170.0) ** 2 < 1
    rng = np.random.default_rng(0)
    data = np.full(shape, -1000, dtype=np.int16)
    for k in range(shape[2]):
        sl = np.where(body, 40, -1000).astype(np.int16)
        sl[(x - 60) ** 2 + (y + 10) ** 2 < (40 + 20 * np.sin(k / 40)) ** 2] = 110
        sl[(x + 80) ** 2 + (y - 20) ** 2 < 30**2] = 400
        data[:, :, k] = sl + rng.integers(-15, 15, size=sl.shape, dtype=np.int16)
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = (180.0, 180.0, -shape[2] * SPACING[2] / 2)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/segbench"))
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--fp32", action="store_true")
    parser.add_argument("--slices", type=int, default=SHAPE[2])
    args = parser.parse_args()

    from models.allocator import keep_freed_memory

    keep_freed_memory()  # as the `asa` command line does: freed blocks stay in the process (peak RSS included)
    from models.inference import Segmenter, SegmentOptions, write_outputs
    from models.modeldir import (
        ModelSpec,
        Preprocessing,
        SegNetwork,
        btcv_labels,
        build_segmentation_network,
        save_model,
    )

    args.workdir.mkdir(parents=True, exist_ok=True)
    shape = (*SHAPE[:2], args.slices)
    scan = args.workdir / f"ct512x512x{args.slices}.nii.gz"
    if not scan.exists():
        make_scan(scan, shape)
    spec = ModelSpec(labels=btcv_labels(), network=SegNetwork(feature_size=12),
                     preprocessing=Preprocessing(roi=(args.roi,) * 3))
    torch.manual_seed(0)
    model_dir = save_model(args.workdir / "model", build_segmentation_network(spec), spec)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    segmenter = Segmenter.from_model_dir(model_dir, device="cpu", options=SegmentOptions(
        overlap=args.overlap, fast=args.fast, fast_path=not args.fp32))
    result = segmenter.segment(scan)
    write_outputs(result, args.workdir / "out")
    print(json.dumps({
        "shape": list(shape), "spacing": list(SPACING), "roi": args.roi, "overlap": args.overlap, "fast": args.fast,
        "fast_path": not args.fp32, "torch_threads": torch.get_num_threads(),
        "passes": result.info["passes"], "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        "wall_s": round(time.perf_counter() - t0, 1), "rss_before_mb": round(base),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
