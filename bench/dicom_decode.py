"""Reading a long JPEG 2000 DICOM series: slices decoded in worker processes against one process, as JSON.

The series is real CT: the TotalSegmentator sample's 20-slice JPEG 2000 series (fetched and cached by
``asa sample-data``), repeated ``--copies`` times along z with new positions and UIDs (the compressed
pixel data is untouched), written once under ``--workdir``. ``load_ct`` reads it with the worker pool
(:mod:`models.io.dicom_pixels`, as ``asa segment`` does) and with the pool switched off, alternating,
``--repeats`` times each in this process; medians, their ratio, and whether the volumes are identical.
``--enhanced`` reads the same slices as one enhanced (multi-frame) image instead, JPEG 2000 again (highdicom's
legacy conversion, frames re-encoded once), whose frames the pool decodes in chunks.

    python bench/dicom_decode.py [--copies 15] [--repeats 3] [--enhanced] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from jsonout import emit_json
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.data.sample import fetch_sample_data  # noqa: E402
from models.io import dicom_pixels  # noqa: E402
from models.io.reader import load_ct  # noqa: E402


def long_series(out: Path, copies: int) -> Path:
    """The sample's series stacked ``copies`` times along its own slice direction (written once)."""
    done = out / ".complete"
    if done.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    source = sorted(p for p in (fetch_sample_data() / "example_ct_dicom").rglob("*") if p.is_file())
    slices = sorted((pydicom.dcmread(p) for p in source), key=lambda d: float(d.ImagePositionPatient[2]))
    z0 = float(slices[0].ImagePositionPatient[2])
    step = (float(slices[-1].ImagePositionPatient[2]) - z0) / (len(slices) - 1)
    series_uid = generate_uid()
    for c in range(copies):
        for i, ds in enumerate(slices):
            k = c * len(slices) + i
            uid = generate_uid()
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = uid
            ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.InstanceNumber = k + 1
            x, y, _ = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z0 + k * step]
            ds.save_as(out / f"IM{k:04d}.dcm")
    done.touch()
    return out


def enhanced_image(folder: Path, out: Path) -> Path:
    """The series as one JPEG 2000 enhanced CT image (written once)."""
    if out.exists():
        return out
    from highdicom import UID
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    datasets, study = [], UID()
    for p in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(p)
        ds.decompress()
        ds.SOPClassUID = pydicom.uid.CTImageStorage  # the anonymised sample leaves these blank
        ds.StudyInstanceUID = study
        datasets.append(ds)
    image = LegacyConvertedEnhancedCTImage(datasets, series_instance_uid=UID(), series_number=2,
                                           sop_instance_uid=UID(), instance_number=1)  # fmt: skip
    image.compress(pydicom.uid.JPEG2000Lossless)
    image.save_as(out.with_suffix(".tmp"))
    out.with_suffix(".tmp").replace(out)
    return out


def main(copies: int, repeats: int, workdir: Path, enhanced: bool = False) -> dict:
    folder = long_series(workdir / f"j2k_x{copies}", copies)
    n = sum(1 for p in folder.iterdir() if p.suffix == ".dcm")
    source: Path = enhanced_image(folder, workdir / f"j2k_x{copies}_enhanced.dcm") if enhanced else folder
    pool_min = dicom_pixels.POOL_MIN_SLICES
    times: dict[str, list[float]] = {"one_process": [], "worker_pool": []}
    arrays = {}
    for _ in range(repeats):
        for route in times:
            dicom_pixels.POOL_MIN_SLICES = pool_min if route == "worker_pool" else 10**9
            t0 = time.perf_counter()
            arrays[route] = load_ct(source).array
            times[route].append(time.perf_counter() - t0)
    dicom_pixels.POOL_MIN_SLICES = pool_min
    one, pool = statistics.median(times["one_process"]), statistics.median(times["worker_pool"])
    return {
        "series": {"slices": n, "rows_columns": list(arrays["one_process"].shape[:2]),
                   "transfer_syntax": "JPEG 2000 Lossless", "layout": "one enhanced image" if enhanced else "files"},
        "cpus": len(os.sched_getaffinity(0)),
        "workers": dicom_pixels.decode_workers(n, compressed=True),
        "repeats": repeats,
        "one_process_s": round(one, 3),
        "worker_pool_s": round(pool, 3),
        "speedup": round(one / pool, 3),
        "per_slice_ms": {"one_process": round(1000 * one / n, 2), "worker_pool": round(1000 * pool / n, 2)},
        "identical_volumes": bool(np.array_equal(arrays["one_process"], arrays["worker_pool"])),
        "times_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=15, help="times the 20-slice series is stacked (15: 300)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/asa-bench-dicom"))
    parser.add_argument("--enhanced", action="store_true", help="one multi-frame image instead of one file a slice")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    emit_json(main(args.copies, args.repeats, args.workdir, args.enhanced), args.out)
