"""``asa segment`` end to end against MONAI's documented BTCV inference recipe: time, agreement, memory.

Both pipelines run in their own process on the same CT with the same weights; the parent measures each
process's wall time and peak RSS (``os.wait4``) and repeats the whole comparison ``--repeats`` times
(medians reported: the machine is noisy). The baseline is the Swin UNETR BTCV tutorial's route:

    LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) -> Spacingd(bilinear) -> ScaleIntensityRanged
    -> CropForegroundd -> sliding_window_inference(sw batch 4, overlap 0.5, gaussian, fp32) -> softmax
    -> Invertd(probabilities, bilinear) -> argmax -> SaveImaged

Cases: the real sample's ``example_ct.nii.gz`` (TotalSegmentator's reference CT, 122 x 101 x 112 at 3 mm)
and the same anatomy at clinical size, 512 x 512 x 300 (``bench/large_ct.py``: interpolated to 0.7 mm,
noise added, stored LPS), so that a model trained on CT recognises what it sees in both. ``--fast``,
``--organs liver`` and ``--organs`` of a small organ are timed on the large CT as well (each with its
agreement with the full pass; for ``--organs``, the organ's region and how many of the full pass's windows
ran: the liver's region touches most windows, a kidney's few), and ``--bf16`` (opt-in;
fast on CPUs with AMX or AVX512-BF16) on both, with its agreement against the fp32 baseline and against
``asa segment``'s fp32 mask.
The model is ``--model RUN`` or, by default, a feature-size-12 BTCV-layout Swin UNETR with random weights
(speed and memory do not depend on the weights; agreement is stricter on a trained model).
``asa segment`` reads the scan while it loads torch and the model (:mod:`models.io.read_ahead`), so its
``load`` stage is only the wait; ``asa_read_s`` is the whole read, and
``asa_share_outside_network_read_not_overlapped`` counts the share as if the read had not overlapped.

    python bench/inference.py [--model RUN] [--repeats 3] [--out bench/results/inference_cpu.json]
    python bench/inference.py --device cuda --feature-size 48 --no-bf16 --out bench/results/inference_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from jsonout import emit_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# -- the baseline pipeline (runs in its own process) ----------------------------------------------
def run_baseline(scan: Path, model_dir: Path, out: Path, overlap: float, blur: bool = False,
                 device: str = "cpu") -> dict[str, float]:  # fmt: skip
    """MONAI's BTCV recipe, as documented: inverse transforms on the probabilities, then argmax.

    ``blur``: add ASA-CT's anti-aliasing blur before ``Spacingd`` (as an exported bundle does), so that the
    two pipelines see the same network input and their masks differ only by how they get there.
    """
    import torch
    from monai.data import decollate_batch, list_data_collate
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        AsDiscreted,
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        Invertd,
        Lambdad,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    from models.data.transforms import anti_alias
    from models.modeldir import load_model

    network, spec = load_model(model_dir, map_location=device)
    network.eval()
    prep = spec.preprocessing
    pre = Compose([
        LoadImaged(keys="image"),
        EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes="RAS"),
        *([Lambdad(keys="image", func=lambda x: anti_alias(x, prep.spacing))] if blur else []),
        Spacingd(keys="image", pixdim=prep.spacing, mode="bilinear"),
        ScaleIntensityRanged(keys="image", a_min=prep.hu_min, a_max=prep.hu_max, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys="image", source_key="image", allow_smaller=True),
    ])  # fmt: skip
    post = Compose([
        Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
        AsDiscreted(keys="pred", argmax=True),
        SaveImaged(keys="pred", output_dir=str(out), output_postfix="seg", output_dtype=np.uint8,
                   separate_folder=False, resample=False, print_log=False),
    ])  # fmt: skip
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    batch = list_data_collate([pre({"image": str(scan)})])
    times["load_preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        image = batch["image"].to(device)
        batch["pred"] = sliding_window_inference(image, prep.roi, 4, network, overlap=overlap, mode="gaussian").cpu()
    times["network"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for item in decollate_batch(batch):
        item["pred"] = torch.softmax(item["pred"], dim=0)
        post(item)
    times["postprocess_write"] = time.perf_counter() - t0
    return times


# -- process management ----------------------------------------------------------------------------
def run_child(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd``: its wall time, its stdout and its own peak RSS (reaped with ``wait4``, not the parent's)."""
    t0 = time.perf_counter()
    with open(os.devnull, "w") as null:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=null, env=env, text=True)
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": stdout}


def dice_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Mean Dice over the labels present in either mask (background excluded)."""
    labels = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    per = {}
    for k in labels:
        x, y = a == k, b == k
        per[int(k)] = float(2 * np.logical_and(x, y).sum() / max(x.sum() + y.sum(), 1))
    return {"mean_dice": float(np.mean(list(per.values()))) if per else 1.0, "per_label": per,
            "voxel_agreement": float((a == b).mean())}  # fmt: skip


def load_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj).squeeze(), img.affine


def disagreement_by_region(mask_path: Path, other: np.ndarray, crop: Any) -> dict[str, int] | None:
    """Voxels where ``mask_path``'s map and ``other`` (same file grid) differ, inside and outside ``crop``.

    ``crop`` is report.json's box on the reader's RAS grid, so both maps are compared there.
    """
    import nibabel as nib

    if not isinstance(crop, dict):
        return None
    img = nib.load(str(mask_path))
    ornt = nib.orientations.io_orientation(img.affine)
    to_ras = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(("R", "A", "S")))
    differ = nib.orientations.apply_orientation(np.asarray(img.dataobj).squeeze() != other, to_ras)
    box = tuple(slice(a, b) for a, b in zip(crop["start"], crop["stop"], strict=True))
    inside = int(differ[box].sum())
    return {"inside_region": inside, "outside_region": int(differ.sum()) - inside}


def default_model(workdir: Path, feature_size: int = 12) -> Path:
    """A Swin UNETR with random weights and the 14 BTCV labels at the BTCV spacing (1.5 x 1.5 x 2 mm, roi 96)."""
    import torch

    from models.modeldir import ModelSpec, SegNetwork, btcv_labels, build_segmentation_network, save_model

    spec = ModelSpec(labels=btcv_labels(), network=SegNetwork(feature_size=feature_size))
    torch.manual_seed(0)
    return save_model(workdir / f"model-random-fs{feature_size}", build_segmentation_network(spec), spec)


# `--organs NAME`, timed where --fast is: a coarse pass, then the windows near the organ. The liver is large
# (its box touches most of the full pass's windows), the left kidney small: the two ends of what it saves.
ORGAN_CASES = {"organs": "liver", "organs_small": "left kidney"}


def compare(case: str, scan: Path, model: Path, workdir: Path, repeats: int, overlap: float, env: dict[str, str],
            with_fast: bool, with_bf16: bool = True, baseline_blur: bool = False,
            device: str = "cpu") -> dict[str, Any]:  # fmt: skip
    asa = shutil.which("asa") or str(REPO / ".venv" / "bin" / "asa")  # PATH first: bench/gpu/run.sh puts one there
    pipelines = ("asa", "baseline", "bf16", "fast")
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in (*pipelines, *ORGAN_CASES)}
    for r in range(repeats):
        out_asa, out_base, out_bf16, out_fast = (workdir / case / f"{k}{r}" for k in pipelines)
        res = run_child([asa, "segment", str(scan), "--model", str(model), "--out", str(out_asa),
                         "--overlap", str(overlap), "--device", device], env)  # fmt: skip
        report = json.loads(next(out_asa.rglob("report.json")).read_text())
        res["stages_s"] = report["timings_s"]
        res["read_s"] = report.get("read_s", report["timings_s"]["load"])  # read ahead: load is only the wait
        runs["asa"].append(res)
        res = run_child([sys.executable, __file__, "--worker", "baseline", "--scan", str(scan), "--model", str(model),
                         "--worker-out", str(out_base), "--overlap", str(overlap), "--device", device,
                         *(["--baseline-blur"] if baseline_blur else [])], env)  # fmt: skip
        res["stages_s"] = json.loads(res["stdout"].strip().splitlines()[-1])
        runs["baseline"].append(res)
        if with_bf16:
            res = run_child([asa, "segment", str(scan), "--model", str(model), "--out", str(out_bf16), "--bf16",
                             "--overlap", str(overlap), "--device", device], env)  # fmt: skip
            report = json.loads(next(out_bf16.rglob("report.json")).read_text())
            res["stages_s"] = report["timings_s"]
            runs["bf16"].append(res)
        if with_fast:
            res = run_child([asa, "segment", str(scan), "--model", str(model), "--out", str(out_fast), "--fast",
                             "--overlap", str(overlap), "--device", device], env)  # fmt: skip
            runs["fast"].append(res)
            for key, organ in ORGAN_CASES.items():
                out_organs = workdir / case / f"{key}{r}"
                res = run_child([asa, "segment", str(scan), "--model", str(model), "--out", str(out_organs),
                                 "--organs", organ, "--overlap", str(overlap), "--device", device], env)  # fmt: skip
                report = json.loads(next(out_organs.rglob("report.json")).read_text())
                res["crop"], fine = report.get("crop"), report["passes"][-1]
                res["windows"] = {"run": fine.get("windows_run"), "placed": fine.get("windows_placed")}
                runs[key].append(res)
    ours, ours_affine = load_mask(next((workdir / case / "asa0").rglob("segmentation.nii.gz")))
    base, base_affine = load_mask(next((workdir / case / "baseline0").rglob("*_seg.nii*")))
    if ours.shape != base.shape or not np.allclose(ours_affine, base_affine, atol=1e-3):
        raise RuntimeError(f"{case}: the two masks are not on the same grid: {ours.shape} vs {base.shape}")

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    stages = [r["stages_s"] for r in runs["asa"]]
    network = statistics.median(s["network"] for s in stages)
    stage_total = statistics.median(sum(s.values()) for s in stages)
    result: dict[str, Any] = {
        "scan": str(scan),
        "shape": list(ours.shape),
        "asa_wall_s": med("asa", "wall_s"),
        "baseline_wall_s": med("baseline", "wall_s"),
        "speedup": med("baseline", "wall_s") / med("asa", "wall_s"),
        "asa_peak_rss_mb": med("asa", "peak_rss_mb"),
        "baseline_peak_rss_mb": med("baseline", "peak_rss_mb"),
        "agreement": dice_agreement(ours, base),
        "asa_stages_s": {k: statistics.median(s[k] for s in stages) for k in stages[0]},
        "asa_share_outside_network": 1.0 - network / stage_total,
        # as if the scan's read did not overlap the model's loading (models/io/read_ahead.py)
        "asa_read_s": med("asa", "read_s"),
        "asa_share_outside_network_read_not_overlapped": 1.0 - network / statistics.median(
            sum(r["stages_s"].values()) - r["stages_s"]["load"] + r["read_s"] for r in runs["asa"]),
        "asa_share_outside_network_incl_startup": 1.0 - network / med("asa", "wall_s"),
        "baseline_stages_s": {k: statistics.median(r["stages_s"][k] for r in runs["baseline"])
                              for k in runs["baseline"][0]["stages_s"]},
        "walls_s": {k: [round(r["wall_s"], 2) for r in v] for k, v in runs.items() if v},
    }
    if with_bf16:
        bf16, _ = load_mask(next((workdir / case / "bf160").rglob("segmentation.nii.gz")))
        result["bf16"] = {
            "wall_s": med("bf16", "wall_s"),
            "speedup": med("baseline", "wall_s") / med("bf16", "wall_s"),
            "network_s": statistics.median(r["stages_s"]["network"] for r in runs["bf16"]),
            "agreement_with_baseline": dice_agreement(bf16, base),
            "agreement_with_asa_fp32": dice_agreement(bf16, ours),
        }
    if with_fast:
        result["fast_wall_s"] = med("fast", "wall_s")
        result["fast_peak_rss_mb"] = med("fast", "peak_rss_mb")
        fast, _ = load_mask(next((workdir / case / "fast0").rglob("segmentation.nii.gz")))
        fast_vs_full = dice_agreement(fast, ours)
        result["fast_vs_full_dice"] = fast_vs_full["mean_dice"]
        result["fast_vs_full_per_label"] = fast_vs_full["per_label"]
        label_ids = {v["name"]: int(k) for k, v in json.loads((model / "model.json").read_text())["labels"].items()}
        for key, organ in ORGAN_CASES.items():
            organs_path = next((workdir / case / f"{key}0").rglob("segmentation.nii.gz"))
            organs, _ = load_mask(organs_path)
            full_organ = np.where(ours == label_ids[organ], label_ids[organ], 0)  # the full pass, this organ only
            result[key] = {
                "organs": organ,
                "wall_s": med(key, "wall_s"),
                "full_pass_voxels": int(np.count_nonzero(full_organ)),
                "crop": runs[key][0]["crop"],
                "windows": runs[key][0]["windows"],
                "dice_vs_full": dice_agreement(organs, full_organ)["mean_dice"],
                "voxels_differing_from_full": disagreement_by_region(organs_path, full_organ, runs[key][0]["crop"]),
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: random weights, BTCV layout)")
    parser.add_argument("--feature-size", type=int, default=12, help="of the default model (48 on a GPU)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="for both pipelines")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--cases", default="real,large", help="real, large or both")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/asa-bench-inference"))
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--baseline-blur", action="store_true",
                        help="give the baseline ASA-CT's anti-aliasing blur (isolates every other difference)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 runs (saves a third of the time)")
    parser.add_argument("--worker", choices=["baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--scan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "baseline":
        print(json.dumps(run_baseline(args.scan, args.model, args.worker_out, args.overlap, args.baseline_blur,
                                      args.device)))
        return

    import torch

    from models.data.sample import fetch_sample_data

    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.model.resolve() if args.model else default_model(args.workdir, args.feature_size)
    # the repository first, then what the caller's PYTHONPATH held (bench/gpu/run.sh's packages)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1")
    cases: dict[str, Path] = {}
    wanted = {c.strip() for c in args.cases.split(",")}
    if "real" in wanted:
        cases["real_example_ct"] = fetch_sample_data() / "example_ct.nii.gz"
    if "large" in wanted:
        large = args.workdir / "ct_sample_512x512x300.nii.gz"
        if not large.exists():  # in a child: Linux keeps a process's peak RSS across fork and exec, so a parent
            # that had held the 512^3-class volume would lend every later child its peak (ru_maxrss)
            subprocess.run([sys.executable, str(REPO / "bench" / "large_ct.py"), str(large)], env=env, check=True,
                           stdout=subprocess.DEVNULL)
        cases["large_512x512x300"] = large
    results = {
        "model": str(model),
        "overlap": args.overlap,
        "repeats": args.repeats,
        "baseline_blur": args.baseline_blur,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cases": {name: compare(name, scan, model, args.workdir, args.repeats, args.overlap, env,
                                with_fast=name.startswith("large"), with_bf16=not args.no_bf16,
                                baseline_blur=args.baseline_blur, device=args.device)
                  for name, scan in cases.items()},
    }
    emit_json(results, args.out)


if __name__ == "__main__":
    main()
