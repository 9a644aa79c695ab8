"""Thin scans: how much does the sliding window's padding matter? Prints JSON.

A 20-slice series (40 mm) is 10 slices at the cpu-demo model's 4 mm, so every window is mostly padding.
MONAI pads with a constant (0 = air after the HU window); ASA-CT pads with the scan's own edge slices
(``THIN_SCAN_PADDING``). This runs one finetuned model on the real sample twice per case, once per padding
mode, and reports the Dice of every organ present in the reference:

- ``dicom``: the other patient's 20-slice JPEG 2000 series against its TotalSegmentator mask;
- ``train_slab``: a slab of the training scan as thin as that series (40 mm through the liver's centre),
  which separates "thin input" from "unseen patient";
- ``train_full``: the whole training scan (what the model was fitted to).

The ``dicom`` case also runs once with edge-slice padding but without the anti-aliasing blur before
resampling (``replicate_no_antialias``): what the 1 mm series looked like to the model before the blur.
With the default settings its DICOM-SEG is written and read back with highdicom, and every organ's frames
are compared with the NIfTI mask voxel for voxel (``dicom_seg``).

    python bench/thin_scan.py --model runs/real-seg [--precision fp32|bf16] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from jsonout import emit_json

from models.data import spacing as data_spacing
from models.data import transforms
from models.data.sample import fetch_sample_data
from models.evaluation.evaluate import remap
from models.evaluation.metrics import case_metrics
from models.finetune.labels import load_label_map
from models.inference import SegmentationResult, Segmenter, SegmentOptions, predict, write_outputs
from models.io.reader import load_label

MODES = ("constant", "replicate")
SLAB_MM = 40.0


def dice_per_organ(
    pred: np.ndarray, ref: np.ndarray, organs: dict[int, str], spacing: Sequence[float]
) -> dict[str, float]:
    """Dice (``asa evaluate``'s metrics) of every organ present in the reference."""
    present = {i: n for i, n in organs.items() if (ref == i).any()}
    return {name: round(m["dice"], 4) for name, m in case_metrics(pred, ref, present, spacing).items()}


def write_slab(image: Path, label: Path, liver_id: int, mapping: dict[int, int], tmp: Path) -> tuple[Path, Path]:
    """A SLAB_MM-thick slab (last axis) of ``image`` and ``label`` centred on the liver."""
    img, lab = nib.load(str(image)), nib.load(str(label))
    ref = remap(np.asarray(lab.dataobj), mapping)
    z = np.nonzero((ref == liver_id).any(axis=(0, 1)))[0]
    thick = max(1, round(SLAB_MM / float(img.header.get_zooms()[2])))
    start = max(0, int(z.mean()) - thick // 2)
    paths = []
    for name, nii in (("slab_ct.nii.gz", img), ("slab_seg.nii.gz", lab)):
        path = tmp / name
        nib.save(nii.slicer[:, :, start : start + thick], str(path))
        paths.append(path)
    return paths[0], paths[1]


def dicom_seg_check(result: SegmentationResult, out: Path) -> dict:
    """Write the outputs, read the DICOM-SEG back and compare each organ's frames with the NIfTI mask."""
    write_outputs(result, out)
    nifti = np.asarray(nib.load(str(out / "segmentation.nii.gz")).dataobj)
    seg = hd.seg.segread(out / "segmentation.dcm")
    numbers = seg.get_segment_numbers()
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=result.ct.meta["sop_instance_uids"], segment_numbers=numbers,
        combine_segments=True, relabel=False, assert_missing_frames_are_empty=True,
    )  # fmt: skip
    by_name = {seg.get_segment_description(n).segment_label: pixels == n for n in numbers}
    present = {i: n for i, n in result.organ_names.items() if (nifti == i).any()}
    same = set(by_name) == set(present.values()) and all(
        np.array_equal(by_name[n], (nifti == i).transpose(2, 1, 0)) for i, n in present.items()
    )  # NIfTI (column, row, slice) -> frames (slice, row, column), in the series' slice order
    return {"segments": sorted(by_name), "same_voxels_as_nifti": bool(same),
            "voxels": {n: int((nifti == i).sum()) for i, n in present.items()}}  # fmt: skip


@contextlib.contextmanager
def settings(mode: str) -> Iterator[None]:
    """Padding mode (and, for ``replicate_no_antialias``, no blur) for the calls made inside."""
    sigma = data_spacing.anti_alias_sigma
    predict.THIN_SCAN_PADDING = "replicate" if mode == "replicate_no_antialias" else mode  # read at call time
    if mode == "replicate_no_antialias":  # the separable route reads spacing's, the scipy fallback transforms'
        data_spacing.anti_alias_sigma = transforms.anti_alias_sigma = lambda source, target: (0.0,) * len(source)
    try:
        yield
    finally:
        data_spacing.anti_alias_sigma = transforms.anti_alias_sigma = sigma
        predict.THIN_SCAN_PADDING = "replicate"


PRECISIONS = {"fp32": False, "bf16": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--label-map", default="totalseg_to_btcv")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help="fp32 (asa segment's default)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    sample = fetch_sample_data()
    mapping, _ = load_label_map(args.label_map)
    options = SegmentOptions(bf16=PRECISIONS[args.precision])
    segmenter = Segmenter.from_model_dir(args.model, device="cpu", options=options)
    organs = segmenter.spec.organ_names
    liver = next(i for i, n in organs.items() if n == "liver")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        slab_ct, slab_seg = write_slab(
            sample / "example_ct.nii.gz", sample / "example_seg_fast_force_split.nii.gz", liver, mapping, Path(tmp)
        )
        cases = {
            "dicom": (sample / "example_ct_dicom", sample / "example_seg_dicom.nii.gz"),
            "train_slab": (slab_ct, slab_seg),
            "train_full": (sample / "example_ct.nii.gz", sample / "example_seg_fast_force_split.nii.gz"),
        }
        for case, (image, label) in cases.items():
            results[case] = {}
            for mode in (*MODES, "replicate_no_antialias") if case == "dicom" else MODES:
                t0 = time.perf_counter()
                with settings(mode):
                    seg = segmenter.segment(image)
                ref = remap(load_label(label, like=seg.ct), mapping)
                dice = dice_per_organ(seg.canonical_labels(), ref, organs, seg.ct.spacing)
                results[case][mode] = {
                    "shape": list(seg.ct.array.shape),
                    "dice": dice,
                    "mean_dice": round(float(np.mean(list(dice.values()))), 4) if dice else None,
                    "liver_dice": dice.get("liver"),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                if case == "dicom" and mode == "replicate":
                    results[case]["dicom_seg"] = dicom_seg_check(seg, Path(tmp) / "dicom_out")
    report = {"model": str(args.model), "precision": args.precision, "slab_mm": SLAB_MM, "cases": results}
    emit_json(report, args.out, indent=1)


if __name__ == "__main__":
    main()
