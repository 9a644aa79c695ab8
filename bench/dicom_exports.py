"""Time to write the DICOM exports of one real segmentation: the RTSTRUCT and the measurement report (DICOM SR)
against the DICOM-SEG, same run.

The real sample's DICOM series (512 x 512 x 20, JPEG 2000) with its reference organs (TotalSegmentator output
mapped to the 13 BTCV organs) as the segmentation, so the contours are those of real organs. Prints JSON:
median seconds over repeats for each writer, the ratios to the SEG, the structure set's size (ROIs,
contours, points, bytes), and the time to read the SEG and the RTSTRUCT back as label maps (``load_label``,
as finetuning and ``asa evaluate`` do) against a label NIfTI of the same map. Needs `asa sample-data` first.

    python bench/dicom_exports.py --repeats 5 --out bench/results/dicom_exports_cpu.json
    python bench/dicom_exports.py --repeats 3 --copies 15 --out bench/results/dicom_exports_300_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from dicom_decode import long_series
from jsonout import emit_json
from nibabel.orientations import apply_orientation

from models.data.sample import sample_cache_dir
from models.finetune.labels import apply_label_map, load_label_map
from models.inference.dicom_seg import write_dicom_seg
from models.inference.dicom_sr import write_measurement_report
from models.inference.rtstruct import write_rtstruct
from models.inference.segmenter import SegmentationResult
from models.inference.stats import organ_stats
from models.inference.writers import save_label_nifti
from models.io.reader import load_ct, load_label
from models.modeldir import btcv_labels


def reference_result(copies: int = 1, workdir: Path = Path("/tmp/asa-bench-dicom")) -> SegmentationResult:
    """The sample series with its reference organs as if a model had found them; ``copies`` > 1 stacks both
    that many times along the slices (``bench/dicom_decode.py``'s long series: clinical length, real organs)."""
    root = sample_cache_dir()
    ct = load_ct(root / "example_ct_dicom")
    mapping, _ = load_label_map("totalseg_to_btcv")
    canonical = apply_label_map(load_label(root / "example_seg_dicom.nii.gz", like=ct), mapping).astype(np.uint8)
    if copies > 1:
        source = np.tile(ct.to_source(canonical), (1, 1, copies))
        short = ct.to_source(ct.array)
        ct = load_ct(long_series(workdir / f"j2k_x{copies}", copies))
        if not np.array_equal(ct.to_source(ct.array), np.tile(short, (1, 1, copies))):
            raise RuntimeError("the stacked series' slices are not the sample's, repeated: labels would not fit")
        canonical = np.ascontiguousarray(apply_orientation(source, ct.source.to_canonical_transform))
    labels = btcv_labels()
    stats = organ_stats(canonical, ct, {i: info.name for i, info in labels.items() if i})
    return SegmentationResult(ct=ct, labels=ct.to_source(canonical), affine=ct.source.affine, label_info=labels,
                              stats=stats, timings={})  # fmt: skip


def read_back(result: SegmentationResult, folder: Path, repeats: int) -> dict[str, float]:
    """Median seconds of ``load_label`` on the SEG, the RTSTRUCT and a label NIfTI of the same map; checks all three
    give the segmentation's labels."""
    save_label_nifti(result.labels, result.affine, folder / "label.nii.gz")
    names = {i: info.name for i, info in result.label_info.items() if i}
    expected = result.canonical_labels()
    files = {"dicom_seg": "dicom_seg.dcm", "dicom_seg_jpeg2000": "dicom_seg_jpeg2000.dcm", "rtstruct": "rtstruct.dcm",
             "nifti": "label.nii.gz"}  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(repeats):
        for name, file in files.items():
            t0 = time.perf_counter()
            labels = load_label(folder / file, like=result.ct, names=names)
            seconds[name].append(time.perf_counter() - t0)
            if not np.array_equal(labels, expected):
                raise RuntimeError(f"{file} does not read back as the segmentation")
    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--copies", type=int, default=1, help="stack the 20-slice series (15: 300 slices)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = reference_result(args.copies)
    seconds: dict[str, list[float]] = {"rtstruct": [], "dicom_seg": [], "dicom_seg_jpeg2000": [], "dicom_sr": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        writers = {
            "dicom_seg": lambda path: write_dicom_seg(result, path),
            "dicom_seg_jpeg2000": lambda path: write_dicom_seg(result, path, compress=True),
            "dicom_sr": lambda path: write_measurement_report(result, folder / "dicom_seg.dcm", path),
            "rtstruct": lambda path: write_rtstruct(result, path),
        }
        for _ in range(args.repeats):
            for name, write in writers.items():
                t0 = time.perf_counter()
                write(folder / f"{name}.dcm")
                seconds[name].append(time.perf_counter() - t0)
        rt = pydicom.dcmread(folder / "rtstruct.dcm")
        reading = read_back(result, folder, args.repeats)
        sizes = {name: (folder / f"{name}.dcm").stat().st_size for name in seconds}
    median = {name: statistics.median(values) for name, values in seconds.items()}
    emit_json(
        {
            "bench": "dicom_exports",
            "scan": f"TotalSegmentator sample, DICOM series 512 x 512 x {20 * args.copies} (JPEG 2000)"
            + (f", stacked {args.copies} times" if args.copies > 1 else ""),
            "repeats": args.repeats,
            "median_s": {k: round(v, 4) for k, v in median.items()},
            "over_dicom_seg": {
                k: round(median[k] / median["dicom_seg"], 3) for k in ("rtstruct", "dicom_sr", "dicom_seg_jpeg2000")
            },
            "rtstruct": {
                "rois": len(rt.ROIContourSequence),
                "contours": sum(len(r.ContourSequence) for r in rt.ROIContourSequence),
                "points": sum(c.NumberOfContourPoints for r in rt.ROIContourSequence for c in r.ContourSequence),
            },
            "bytes": sizes,
            "read_label_median_s": {k: round(v, 4) for k, v in reading.items()},
        },
        args.out,
    )


if __name__ == "__main__":
    main()
