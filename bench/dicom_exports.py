"""Time to write the DICOM exports of one real segmentation: the RTSTRUCT against the DICOM-SEG, same run.

The real sample's DICOM series (512 x 512 x 20, JPEG 2000) with its reference organs (TotalSegmentator output
mapped to the 13 BTCV organs) as the segmentation, so the contours are those of real organs. Prints JSON:
median seconds over repeats for each writer, their ratio, and the structure set's size (ROIs, contours,
points, bytes). Needs `asa sample-data` first.

    python bench/dicom_exports.py --repeats 5 --out bench/results/dicom_exports_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from jsonout import emit_json

from models.data.sample import sample_cache_dir
from models.finetune.labels import apply_label_map, load_label_map
from models.inference.dicom_seg import write_dicom_seg
from models.inference.rtstruct import write_rtstruct
from models.inference.segmenter import SegmentationResult
from models.io.reader import load_ct, load_label
from models.modeldir import btcv_labels


def reference_result() -> SegmentationResult:
    """The sample series with its reference organs as if a model had found them."""
    root = sample_cache_dir()
    ct = load_ct(root / "example_ct_dicom")
    mapping, _ = load_label_map("totalseg_to_btcv")
    canonical = apply_label_map(load_label(root / "example_seg_dicom.nii.gz", like=ct), mapping).astype(np.uint8)
    labels = btcv_labels()
    organs = [{"id": i, "name": info.name, "voxels": int((canonical == i).sum())} for i, info in labels.items() if i]
    return SegmentationResult(ct=ct, labels=ct.to_source(canonical), affine=ct.source.affine, label_info=labels,
                              stats={"organs": organs}, timings={})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = reference_result()
    seconds: dict[str, list[float]] = {"rtstruct": [], "dicom_seg": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, write in (("dicom_seg", write_dicom_seg), ("rtstruct", write_rtstruct)):
                t0 = time.perf_counter()
                write(result, Path(tmp) / f"{name}.dcm")
                seconds[name].append(time.perf_counter() - t0)
        rt = pydicom.dcmread(Path(tmp) / "rtstruct.dcm")
        sizes = {name: (Path(tmp) / f"{name}.dcm").stat().st_size for name in seconds}
    median = {name: statistics.median(values) for name, values in seconds.items()}
    emit_json(
        {
            "bench": "dicom_exports",
            "scan": "TotalSegmentator sample, DICOM series 512 x 512 x 20 (JPEG 2000)",
            "repeats": args.repeats,
            "median_s": {k: round(v, 4) for k, v in median.items()},
            "rtstruct_over_dicom_seg": round(median["rtstruct"] / median["dicom_seg"], 3),
            "rtstruct": {
                "rois": len(rt.ROIContourSequence),
                "contours": sum(len(r.ContourSequence) for r in rt.ROIContourSequence),
                "points": sum(c.NumberOfContourPoints for r in rt.ROIContourSequence for c in r.ContourSequence),
            },
            "bytes": sizes,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
