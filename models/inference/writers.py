"""Write a :class:`SegmentationResult` to a folder, every file in the input's own space.

Files (``DIR/``)::

    segmentation.nii.gz    uint8 label map, the input's shape and affine (intent "label"); the label names and
                           colours ride along in a NIfTI comment extension (JSON) and in segmentation.json
    segmentation.json      {"labels": {"1": {"name": ..., "color": [r, g, b]}, ...}}: the legend for any viewer
    organs/<name>.nii.gz   with split: one 0/1 mask per organ
    segmentation.dcm       for DICOM input (unless disabled): a DICOM-SEG referencing the source series
    measurements.dcm       with the DICOM-SEG: the organs' volume and HU as a DICOM SR (TID 1500) referencing it
    rtstruct.dcm           for DICOM input, when asked: the organs as contours (RT Structure Set)
    stats.json, stats.csv  per organ: volume, HU mean/std, centroid, bounding box (see models.inference.stats)
    preview.png            three planes with the coloured masks and a legend
    report.json            model, versions, device, options, input, passes, seconds per stage, warnings
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from isal import igzip

from models.inference.preview import save_preview
from models.inference.segmenter import SegmentationResult
from models.inference.stats import stats_csv
from models.io.reader import apply_nifti_forms

NIFTI_NAME = "segmentation.nii.gz"
LABELS_NAME = "segmentation.json"
DICOM_SEG_NAME = "segmentation.dcm"
RTSTRUCT_NAME = "rtstruct.dcm"
MEASUREMENTS_NAME = "measurements.dcm"
NIFTI_COMMENT_CODE = 6  # NIfTI-1 extension code "comment": free text, kept by nibabel, ITK and most tools


def label_table(result: SegmentationResult) -> dict[str, Any]:
    """The legend written beside the mask and into its NIfTI extension."""
    return {
        "format": "asa-ct-labels/1",
        "labels": {str(i): {"name": info.name, "color": list(info.color)} for i, info in result.label_info.items()},
    }


def save_label_nifti(
    labels: np.ndarray,
    affine: np.ndarray,
    path: Path,
    legend: dict[str, Any] | None = None,
    forms: dict[str, Any] | None = None,
) -> Path:
    """uint8 label NIfTI with sform and qform = ``affine`` (as the reader's ``save_nifti``), intent 'label'.

    For NIfTI input, ``forms`` (the scan's qform and sform with their codes, ``ct.meta['nifti_forms']``)
    replace them, so the mask is placed exactly as the scan even where viewers read its header differently.

    ``.nii.gz`` is compressed by ISA-L at its level 1: 0.02 s and 1.1 MB for the organs of a 512 x 512 x 300
    scan, against 0.14 s and 1.6 MB with nibabel's zlib at level 1.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(labels, dtype=np.uint8)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(np.uint8)
    img.set_sform(np.asarray(affine, dtype=np.float64), code=1)
    img.set_qform(np.asarray(affine, dtype=np.float64), code=1)
    if forms is not None:
        apply_nifti_forms(img.header, forms)
    img.header.set_intent("label")
    if legend is not None:
        img.header.extensions.append(nib.nifti1.Nifti1Extension(NIFTI_COMMENT_CODE, json.dumps(legend).encode()))
    if path.name.lower().endswith(".gz"):
        with igzip.open(path, "wb", compresslevel=1) as stream:
            img.to_stream(stream)
    else:
        nib.save(img, str(path))
    return path


def organ_file_name(name: str) -> str:
    """'right adrenal gland' -> 'right_adrenal_gland' (safe on every file system)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "organ"


def write_outputs(
    result: SegmentationResult, out_dir: Path, *, split: bool = False, dicom_seg: bool = True, rtstruct: bool = False,
    preview: bool = True, compress_dicom_seg: bool = False,
) -> dict[str, Path]:
    """Write every output of ``result`` into ``out_dir``; returns name -> path. Adds ``timings['write']``.

    A DICOM-SEG (and, with ``rtstruct``, an RT Structure Set) is written only for DICOM input; if one cannot
    be written, the reason becomes a warning in report.json and the other files are still written.
    """
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    legend = label_table(result)
    forms = result.ct.meta.get("nifti_forms")
    written["segmentation"] = save_label_nifti(result.labels, result.affine, out_dir / NIFTI_NAME, legend, forms)
    (out_dir / LABELS_NAME).write_text(json.dumps(legend, indent=1))
    written["labels"] = out_dir / LABELS_NAME
    if split:
        for organ_id, name in result.organ_names.items():
            path = out_dir / "organs" / f"{organ_file_name(name)}.nii.gz"
            save_label_nifti((result.labels == organ_id).astype(np.uint8), result.affine, path, forms=forms)
            written[f"organ:{name}"] = path
    for name in (DICOM_SEG_NAME, MEASUREMENTS_NAME, RTSTRUCT_NAME):  # a rerun's failure must not leave an old one
        (out_dir / name).unlink(missing_ok=True)
    if dicom_seg and result.ct.meta.get("format") == "dicom":
        from models.inference.dicom_seg import write_dicom_seg  # highdicom is only imported when needed

        try:
            result.warnings.extend(write_dicom_seg(result, out_dir / DICOM_SEG_NAME, compress=compress_dicom_seg))
        except Exception as exc:  # highdicom validates hard; a failed SEG must not cost the other outputs
            result.warnings.append(f"DICOM-SEG not written: {type(exc).__name__}: {exc}")
        if (out_dir / DICOM_SEG_NAME).exists():
            written["dicom_seg"] = out_dir / DICOM_SEG_NAME
            written.update(_measurement_report(result, out_dir))
    if rtstruct and result.ct.meta.get("format") != "dicom":
        result.warnings.append("no RTSTRUCT: it references the source images, and the input is not DICOM")
    elif rtstruct:
        from models.inference.rtstruct import write_rtstruct

        try:
            result.warnings.extend(write_rtstruct(result, out_dir / RTSTRUCT_NAME))
        except Exception as exc:  # as for the SEG: a failed RTSTRUCT must not cost the other outputs
            result.warnings.append(f"RTSTRUCT not written: {type(exc).__name__}: {exc}")
        if (out_dir / RTSTRUCT_NAME).exists():
            written["rtstruct"] = out_dir / RTSTRUCT_NAME
    (out_dir / "stats.json").write_text(json.dumps(result.stats, indent=1))
    (out_dir / "stats.csv").write_text(stats_csv(result.stats))
    written["stats_json"], written["stats_csv"] = out_dir / "stats.json", out_dir / "stats.csv"
    if preview:
        ct = result.ct
        shape = "x".join(map(str, ct.source.shape))
        title = f"{Path(str(ct.meta.get('path', ''))).name}  ({ct.source.axcodes} {shape})"
        found = [o["id"] for o in result.stats["organs"] if o["voxels"] > 0]
        written["preview"] = save_preview(ct.array, result.canonical_labels(copy=False), ct.spacing, result.label_info,
                                          out_dir / "preview.png", title=title, present=found)
    result.timings["write"] = time.perf_counter() - t0
    written["report"] = write_report(result, out_dir / "report.json", written)
    return written


def _measurement_report(result: SegmentationResult, out_dir: Path) -> dict[str, Path]:
    """The DICOM SR of the organs' figures, referencing the DICOM-SEG just written (a failure is a warning)."""
    from models.inference.dicom_sr import write_measurement_report

    try:
        result.warnings.extend(
            write_measurement_report(result, out_dir / DICOM_SEG_NAME, out_dir / MEASUREMENTS_NAME)
        )
    except Exception as exc:  # highdicom validates hard; the figures are in stats.json anyway
        result.warnings.append(f"measurement report (DICOM SR) not written: {type(exc).__name__}: {exc}")
    path = out_dir / MEASUREMENTS_NAME
    return {"dicom_sr": path} if path.exists() else {}


def report(result: SegmentationResult, files: dict[str, Path] | None = None) -> dict[str, Any]:
    """report.json's content: what ran, where, with what, how long, and what went wrong."""
    return {
        **result.info,
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "total_s": round(sum(result.timings.values()), 3),
        "organs_found": [o["name"] for o in result.stats["organs"] if o["voxels"] > 0],
        "files": {k: p.name if p.parent.name != "organs" else f"organs/{p.name}" for k, p in (files or {}).items()},
        "warnings": list(result.warnings),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _peak_rss_mb() -> float | None:
    """The process's peak resident memory so far (Linux and macOS; None elsewhere)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def write_report(result: SegmentationResult, path: Path, files: dict[str, Path] | None = None) -> Path:
    path.write_text(json.dumps(report(result, files), indent=1, default=str))
    return path
