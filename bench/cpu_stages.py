"""The CPU work around the network on a 512 x 512 x 300 CT, each stage against its previous route, as JSON.

Same run, same data, medians of ``--repeats``:

- ``read``: nibabel's ``get_fdata`` (zlib) then the reorienting float copy, against ``load_ct`` (ISA-L,
  stored values cast and reoriented in one copy);
- ``preprocess``: scipy's full-resolution blur, MONAI ``Spacing`` and the HU window, against
  ``preprocess`` (blur and ``Spacing`` as one matrix per axis), with the largest difference of the two;
- ``labels_to_scan_grid`` and ``organ_stats``: one thread against all of torch's threads;
- ``organ_boxes`` (all organs, and one organ alone: the liver-only maps the cpu-demo model gives on this
  CT): ``find_objects`` over the whole map in memory order, one thread, against ``label_boxes`` (only each
  slice's labelled rectangle);
- ``preview_centre``: numpy's ``any`` on the canonical (flipped) view of the map as the writer sees it,
  against the preview's ``_centre`` (torch's max in memory order);
- ``write_labels``: nibabel's ``.nii.gz`` writer (zlib level 1) against ``save_label_nifti`` (ISA-L).

The CT is ``bench/large_ct.py``'s (the real sample's anatomy at 0.7 mm, stored LPS); the label map is the
sample's TotalSegmentator mask brought to its grid (nearest; it covers the first 30 slices, its last slice
repeats beyond), and the model-grid probabilities a blurred
one-hot of that mask at the cpu-demo spacing (3 x 3 x 4 mm), so boundaries are those of real organs.

    python bench/cpu_stages.py --repeats 5 --out bench/results/cpu_stages.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from jsonout import emit_json
from monai.data import MetaTensor
from monai.transforms import ScaleIntensityRange, Spacing
from nibabel.orientations import apply_orientation
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.config import DataConfig  # noqa: E402
from models.data.sample import fetch_sample_data  # noqa: E402
from models.data.spacing import spacing_grid  # noqa: E402
from models.data.transforms import anti_alias_array, preprocess  # noqa: E402
from models.inference.preview import _centre  # noqa: E402
from models.inference.resample import resample_labels, resample_labels_interpolated  # noqa: E402
from models.inference.stats import label_boxes, organ_stats  # noqa: E402
from models.inference.writers import save_label_nifti  # noqa: E402
from models.io.reader import canonicalise, load_ct  # noqa: E402

MODEL_SPACING = (3.0, 3.0, 4.0)
HU_WINDOW = {"hu_min": -175.0, "hu_max": 250.0}
N_LABELS = 14
ONE_ORGAN = 6  # a large organ of the mapped sample mask (the map's labels are TotalSegmentator's ids mod 14)


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def read_before(path: Path) -> np.ndarray:
    img = nib.load(str(path))
    return canonicalise(img.get_fdata(dtype=np.float32), img.affine, {}).array


def preprocess_before(ct: Any, cfg: DataConfig) -> torch.Tensor:
    hu = anti_alias_array(ct.array, ct.spacing, cfg.spacing)
    image = MetaTensor(torch.from_numpy(np.asarray(hu, dtype=np.float32))[None], affine=ct.affine)
    image = Spacing(pixdim=cfg.spacing, mode="bilinear", padding_mode="border")(image)
    return ScaleIntensityRange(a_min=cfg.hu_min, a_max=cfg.hu_max, b_min=0.0, b_max=1.0, clip=True)(image)


def realistic_labels(ct: Any) -> tuple[np.ndarray, np.ndarray, torch.Tensor, np.ndarray]:
    """(labels on the CT's grid, labels on the model grid, probabilities there, the model grid's affine)."""
    sample = fetch_sample_data()
    src = load_ct(sample / "example_ct.nii.gz")
    # the mask covers the scan's first 30 slices only (so not load_label, which wants the scan's grid): its
    # grid has the scan's origin and spacing, and nearest resampling repeats its last slice beyond them
    mask = np.asarray(nib.load(str(sample / "example_seg.nii.gz")).dataobj).astype(np.int64)  # 100+ classes
    canonical = nib.orientations.apply_orientation(mask, src.source.to_canonical_transform) % N_LABELS
    canonical = canonical.astype(np.uint8)
    scan_labels = np.asfortranarray(resample_labels(canonical, src.affine, ct.array.shape, ct.affine))
    shape, model_affine = spacing_grid(ct.array.shape, ct.affine, MODEL_SPACING)
    model_labels = resample_labels(canonical, src.affine, shape, model_affine)
    onehot = np.stack([ndimage.gaussian_filter((model_labels == k).astype(np.float32), 1.0) for k in range(N_LABELS)])
    probs = torch.from_numpy(onehot / onehot.sum(axis=0, keepdims=True))
    return scan_labels, probs.argmax(dim=0).numpy().astype(np.uint8), probs, model_affine


def main(repeats: int, workdir: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "bench"))
    from large_ct import make_large_ct

    scan = workdir / "ct_sample_512x512x300.nii.gz"
    if not scan.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        make_large_ct(fetch_sample_data() / "example_ct.nii.gz", scan)
    threads = torch.get_num_threads()
    ct = load_ct(scan)
    np.testing.assert_array_equal(read_before(scan), ct.array)
    cfg = DataConfig(spacing=MODEL_SPACING, **HU_WINDOW)
    before, after = preprocess_before(ct, cfg), preprocess(ct, cfg)
    result: dict[str, Any] = {"scan": str(scan), "shape": list(ct.array.shape), "threads": threads,
                              "cpu_count": os.cpu_count(), "repeats": repeats, "stages_s": {}}  # fmt: skip
    stages = result["stages_s"]
    stages["read"] = {"before": median_time(lambda: read_before(scan), repeats),
                      "after": median_time(lambda: load_ct(scan), repeats)}  # fmt: skip
    stages["preprocess"] = {"before": median_time(lambda: preprocess_before(ct, cfg), repeats),
                            "after": median_time(lambda: preprocess(ct, cfg), repeats),
                            "max_abs_diff_0_1_scale": float((before - after).abs().max())}  # fmt: skip

    scan_labels, model_labels, probs, model_affine = realistic_labels(ct)
    body = tuple(slice(0, n) for n in model_labels.shape)
    names = {i: f"label {i}" for i in range(1, N_LABELS)}

    def to_scan_grid() -> np.ndarray:
        return resample_labels_interpolated(model_labels, probs, body, model_affine, ct.array.shape, ct.affine)

    def stats(workers: int) -> dict:
        return organ_stats(scan_labels, ct, names, workers=workers)

    torch.set_num_threads(1)
    one_thread = {"labels_to_scan_grid": median_time(to_scan_grid, repeats), "organ_stats": median_time(
        lambda: stats(1), repeats)}  # fmt: skip
    reference = to_scan_grid()
    torch.set_num_threads(threads)
    stages["labels_to_scan_grid"] = {"one_thread": one_thread["labels_to_scan_grid"],
                                     "all_threads": median_time(to_scan_grid, repeats),
                                     "identical": bool(np.array_equal(reference, to_scan_grid()))}  # fmt: skip
    stages["organ_stats"] = {"one_thread": one_thread["organ_stats"],
                             "all_threads": median_time(lambda: stats(threads), repeats),
                             "identical": stats(1) == stats(threads)}  # fmt: skip
    def whole_map_boxes(labels: np.ndarray) -> list:
        boxes = ndimage.find_objects(labels.T)  # the Fortran map's memory order
        return [None if box is None else box[::-1] for box in boxes]

    one_organ = np.asfortranarray(np.where(scan_labels == ONE_ORGAN, ONE_ORGAN, 0).astype(np.uint8))
    for name, labels in (("organ_boxes", scan_labels), ("organ_boxes_one_organ", one_organ)):
        stages[name] = {"find_objects": median_time(lambda labels=labels: whole_map_boxes(labels), repeats),
                        "labelled_rows": median_time(lambda labels=labels: label_boxes(labels, threads), repeats),
                        "identical": whole_map_boxes(labels) == label_boxes(labels, threads)}  # fmt: skip
    canonical = apply_orientation(ct.to_source(scan_labels), ct.source.to_canonical_transform)

    def any_centre(labels: np.ndarray) -> np.ndarray:
        return np.array([np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != axis))).mean()
                         for axis in range(3)])  # fmt: skip

    stages["preview_centre"] = {"numpy_any": median_time(lambda: any_centre(canonical), repeats),
                                "torch_max": median_time(lambda: _centre(canonical), repeats),
                                "identical": bool(np.array_equal(any_centre(canonical), _centre(canonical)))}
    with tempfile.TemporaryDirectory() as tmp:
        before_path, after_path = Path(tmp) / "nibabel.nii.gz", Path(tmp) / "isal.nii.gz"
        img = nib.Nifti1Image(scan_labels, ct.affine)
        stages["write_labels"] = {"before": median_time(lambda: nib.save(img, str(before_path)), repeats),
                                  "after": median_time(lambda: save_label_nifti(scan_labels, ct.affine, after_path),
                                                       repeats),
                                  "mb_before": round(before_path.stat().st_size / 1e6, 2),
                                  "mb_after": round(after_path.stat().st_size / 1e6, 2),
                                  "identical": bool(np.array_equal(np.asarray(nib.load(str(after_path)).dataobj),
                                                                   scan_labels))}  # fmt: skip
    for stage in stages.values():
        keys = [k for k in stage if isinstance(stage[k], float) and not k.startswith(("max", "mb"))]
        stage["speedup"] = round(stage[keys[0]] / stage[keys[1]], 2)
        for k in keys:
            stage[k] = round(stage[k], 3)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/asa-bench-inference"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    emit_json(main(args.repeats, args.workdir), args.out)
