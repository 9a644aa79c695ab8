"""A model directory as a MONAI Bundle that MONAI's own runner executes.

    python -m monai.bundle run --config_file BUNDLE/configs/inference.json --bundle_root BUNDLE \
        --dataset_dir SCANS --output_dir MASKS

The bundle repeats ``asa segment``'s pipeline with MONAI components only: RAS orientation, the same
anti-aliasing blur (one scipy expression), the model's spacing (bilinear), HU window to [0, 1], the
body's box (CropForeground), gaussian sliding window with the same overlap, softmax, then the inverse
transforms on the probabilities (bilinear: MONAI's own recipe, which `asa segment` reproduces without
full-resolution probabilities) and the argmax, and a uint8 NIfTI per scan on the scan's own grid. The
``run`` section is a plain loop of bundle expressions, so it needs neither pytorch-ignite nor anything
from ASA-CT.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import monai
import torch

import models
from models.data.transforms import ANTI_ALIAS_EXPRESSION, THIN_SCAN_PADDING
from models.modeldir import WEIGHTS_FILE, load_model

RUN_LOOP = (
    "$[@saver(@postprocessing({'image': d['image'], 'pred': "
    "monai.data.MetaTensor(@inferer(d['image'][None].to(@device), @network)[0].cpu(), meta=d['image'].meta)}))"
    " for d in @dataset]"
)


def inference_config(spec_dict: dict[str, Any], overlap: float = 0.5) -> dict[str, Any]:
    """The bundle's ``inference.json`` for a model described by ``model.json``."""
    net, prep = spec_dict["network"], spec_dict["preprocessing"]
    return {
        "imports": [
            "$import glob",
            "$import numpy as np",
            "$import torch",
            "$import monai",
            "$from scipy import ndimage",
        ],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/input'",
        "output_dir": "$@bundle_root + '/output'",
        "datalist": "$sorted(glob.glob(@dataset_dir + '/*.nii.gz') + glob.glob(@dataset_dir + '/*.nii'))",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {
            "_target_": "SwinUNETR",
            "in_channels": 1,
            "out_channels": len(spec_dict["labels"]),
            "feature_size": net["feature_size"],
            "depths": list(net["depths"]),
            "num_heads": list(net["num_heads"]),
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "image_only": True},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {
                    "_target_": "Lambdad",
                    "keys": "image",
                    "func": ANTI_ALIAS_EXPRESSION.format(target=list(prep["spacing"])),
                },
                {
                    "_target_": "Spacingd",
                    "keys": "image",
                    "pixdim": list(prep["spacing"]),
                    "mode": "bilinear",
                    "padding_mode": "border",
                },
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": prep["hu_min"],
                    "a_max": prep["hu_max"],
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "allow_smaller": True},
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "$[{'image': f} for f in @datalist]", "transform": "@preprocessing"},
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(prep["roi"]),
            "sw_batch_size": 2,
            "overlap": overlap,
            "mode": "gaussian",
            "padding_mode": THIN_SCAN_PADDING,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            ],
        },
        "saver": {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_postfix": "seg",
            "output_dtype": "$np.uint8",
            "resample": False,
            "separate_folder": False,
            "print_log": False,
        },
        "initialize": [
            "$monai.utils.set_determinism(seed=0)",
            "$@network.load_state_dict(torch.load(@bundle_root + '/models/model.pt', map_location=@device,"
            " weights_only=True))",
            "$@network.eval()",
            "$torch.set_grad_enabled(False)",
        ],
        "run": [RUN_LOOP],
    }


def metadata(spec_dict: dict[str, Any]) -> dict[str, Any]:
    labels = {str(i): info["name"] for i, info in spec_dict["labels"].items()}
    return {
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by asa export-bundle"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": __import__("numpy").__version__,
        "required_packages_version": {"nibabel": __import__("nibabel").__version__},
        "name": "ASA-CT multi-organ segmentation",
        "task": "CT multi-organ segmentation",
        "description": "Swin UNETR finetuned by ASA-CT (asa finetune); see provenance.",
        "authors": "ASA-CT",
        "copyright": "see provenance",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": list(spec_dict["preprocessing"]["roi"]),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(labels),
                    "spatial_shape": list(spec_dict["preprocessing"]["roi"]),
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": labels,
                }
            },
        },
        "provenance": spec_dict.get("provenance", {}),
        "metrics": spec_dict.get("metrics", {}),
        "asa_ct_version": models.__version__,
    }


def export_bundle(model_dir: Path, out: Path, overlap: float = 0.5) -> Path:
    """Write ``out/configs/{inference,metadata}.json``, ``out/models/model.pt`` and a README."""
    _, spec = load_model(model_dir)  # validates the directory and that the weights match the spec
    spec_dict = json.loads(spec.model_dump_json())
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    (out / "docs").mkdir(exist_ok=True)
    shutil.copyfile(Path(model_dir) / WEIGHTS_FILE, out / "models" / "model.pt")
    (out / "configs" / "inference.json").write_text(json.dumps(inference_config(spec_dict, overlap), indent=2))
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata(spec_dict), indent=2))
    label_list = ", ".join(f"{i} {v['name']}" for i, v in spec_dict["labels"].items())
    (out / "docs" / "README.md").write_text(
        "# ASA-CT segmentation bundle\n\nRun with MONAI alone:\n\n"
        "    python -m monai.bundle run --config_file configs/inference.json --bundle_root . "
        "--dataset_dir SCANS --output_dir MASKS\n\n"
        "SCANS holds NIfTI files; each gives MASKS/<name>_seg.nii.gz (uint8 labels on the scan's grid).\n"
        f"Labels: {label_list}.\n"
    )
    return out
