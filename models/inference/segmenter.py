"""The segmentation API: a :class:`Segmenter` keeps one model in memory and turns scans into results.

Modelled on SAM's predictor (load once, call many times) without its per-image state: ``segment`` keeps
nothing between calls, so a Celery worker can hold one ``Segmenter`` per process and serve every task
with it (the network pass itself is serialised by a lock: one scan's windows at a time is what the
memory estimate assumes). Writing files is separate (:mod:`models.inference.writers`), so the API can
also feed a viewer or a REST response directly.

Pipeline per scan (every array on the reader's canonical RAS grid until the end)::

    load_ct -> anti-aliasing + Spacing + HU window (model resolution)
    -> body box (MONAI CropForeground's box) -> sliding window (gaussian) [+ mirroring TTA]
       [--organs: a coarse pass first locates them; then only the windows touching their box run]
    -> class probabilities and their argmax at model resolution (background outside the body box)
    -> labels on the canonical grid: the argmax of trilinearly interpolated probabilities, computed only in
       model cells that straddle a boundary (elsewhere the cell's one label) -> keep the chosen organs -> stats
    -> ct.to_source: the label map in the input's own voxel order
"""

from __future__ import annotations

import importlib.metadata
import platform
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nibabel.orientations import apply_orientation
from torch import nn

import models
from models.data.spacing import Box, crop_affine, voxel_size
from models.inference.memory import choose_batch
from models.inference.options import FAST_SPACING_FACTOR, SegmentOptions, resolve_organs
from models.inference.predict import TTA_FLIPS, WindowTally, argmax_labels, predict_probabilities, window_streams
from models.inference.preprocess import body_box, inference_spacing, network_input
from models.inference.region import box_within, map_box, organ_box
from models.inference.resample import resample_labels_interpolated
from models.inference.stats import organ_stats
from models.inference.window_attention import window_bias_bytes
from models.io.reader import CTImage, hu_warning, load_ct
from models.modeldir import LabelInfo, ModelSpec, load_model

STAGES = ("load", "preprocess", "network", "postprocess", "write")


@dataclass
class ModelPass:
    """One network pass on the model's grid: what the scan's labels are resampled from."""

    labels: np.ndarray  # uint8 argmax on the whole model grid (background outside the body box)
    probs: torch.Tensor  # (C, body box) class probabilities
    body: Box  # where ``probs`` lies on the model grid
    affine: np.ndarray  # the model grid's voxel-to-world matrix


class ModelDirError(ValueError):
    """The model directory is missing, incomplete or does not match its weights (message names it)."""


@dataclass
class SegmentationResult:
    """One scan's segmentation, in the input's own space, plus what is needed to write and report it.

    ``labels`` has the input file's shape and voxel order (DICOM: column, row, slice in
    ``ct.meta['sop_instance_uids']`` order) and ``affine`` is the input's affine, so saving them gives a
    mask that overlays the input voxel for voxel (a view of the canonical map with flipped strides, not a
    copy). ``label_info`` holds the background and the organs that were kept (all, or ``--organs``);
    ``stats`` is :func:`models.inference.stats.organ_stats`.
    """

    ct: CTImage
    labels: np.ndarray
    affine: np.ndarray
    label_info: dict[int, LabelInfo]
    stats: dict[str, Any]
    timings: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def organ_names(self) -> dict[int, str]:
        return {i: info.name for i, info in self.label_info.items() if i != 0}

    def canonical_labels(self, copy: bool = True) -> np.ndarray:
        """The label map on ``ct.array``'s grid (for overlays on the canonical HU volume).

        ``copy=False`` gives a read-only view (flipped and transposed strides): enough to slice a few planes,
        and free, where the copy of a 512 x 512 x 300 map stored LPS takes 0.2 s (reversed strides).
        """
        view = apply_orientation(self.labels, self.ct.source.to_canonical_transform)
        if not copy:
            view = view.view()
            view.flags.writeable = False
            return view
        return np.array(view, order="K", copy=True)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``: CUDA when available, else CPU. Asking for CUDA without one is an error, not a fallback."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unsupported device {device!r}: use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use cpu or cuda")
    return dev


class Segmenter:
    """A loaded segmentation model: ``Segmenter.from_model_dir(RUN).segment("ct.nii.gz")``.

    Args:
        network: maps (B, 1, X, Y, Z) inputs in [0, 1] to (B, len(spec.labels), X, Y, Z) logits; usually
            the ``SwinUNETR`` of a model directory (any module works, which the tests use).
        spec: the model directory's description (labels, preprocessing).
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available).
        options: default :class:`SegmentOptions` for :meth:`segment`; a call may pass others.
        source: where the model came from (written to report.json).
    """

    def __init__(
        self,
        network: nn.Module,
        spec: ModelSpec,
        device: str | torch.device | None = None,
        options: SegmentOptions | None = None,
        source: str | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.spec = spec
        self.options = options or SegmentOptions()
        resolve_organs(spec, self.options.organs)  # unknown organ names fail here, before any scan is read
        self.network = network.to(self.device).eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.source = source
        self._lock = threading.Lock()

    @classmethod
    def from_model_dir(
        cls, directory: str | Path, device: str | torch.device | None = None, options: SegmentOptions | None = None
    ) -> Segmenter:
        """Load ``model.json`` + ``model.pt`` (see :mod:`models.modeldir`); :class:`ModelDirError` if unusable."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ModelDirError(f"model directory not found: {directory}")
        try:
            network, spec = load_model(directory, map_location="cpu")
        except (FileNotFoundError, ValueError) as exc:
            raise ModelDirError(str(exc)) from exc
        except Exception as exc:  # torch.load on a corrupt file raises pickle/zip/runtime errors
            raise ModelDirError(f"{directory}: cannot load the weights: {type(exc).__name__}: {exc}") from exc
        return cls(network, spec, device=device, options=options, source=str(directory.resolve()))

    # ------------------------------------------------------------------ public API

    def segment(
        self, scan: CTImage | str | Path | Sequence[str | Path], options: SegmentOptions | None = None
    ) -> SegmentationResult:
        """Segment one scan: a loaded :class:`CTImage` or anything :func:`load_ct` reads.

        Raises :class:`models.io.reader.CTReadError` for unreadable input and ``ValueError`` for unknown
        organs. ``result.timings`` has seconds per stage (``write`` is added by the writer).
        """
        opts = options or self.options
        organ_ids = resolve_organs(self.spec, opts.organs)
        timings = dict.fromkeys(STAGES, 0.0)
        t0 = time.perf_counter()
        ct = scan if isinstance(scan, CTImage) else load_ct(scan if isinstance(scan, str | Path) else list(scan))
        timings["load"] = time.perf_counter() - t0
        info: dict[str, Any] = {"passes": []}
        warnings: list[str] = list(ct.warnings)
        if (not_hu := hu_warning(ct.array)) is not None:
            warnings.append(not_hu)
        if opts.bf16 and self.device.type == "cpu" and not cpu_has_native_bf16():
            warnings.append("bf16 on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated: ~10x slower than "
                            "fp32 here (measured on an AVX2 EPYC); drop --bf16")

        if opts.fast and not self.spec.preprocessing.trained_fast:
            mm = " x ".join(f"{s:g}" for s in self.spec.preprocessing.fast_spacing)
            warnings.append(f"--fast runs the model at {FAST_SPACING_FACTOR:g}x the spacing it was trained at "
                            f"({mm} mm): masks are coarser and can be far less accurate; compare with a full run "
                            "(finetune with data.coarse_prob > 0 for a model that knows the fast spacing)")
        labels = self._canonical_labels(ct, opts, organ_ids, timings, info, warnings)

        t0 = time.perf_counter()
        if opts.organs is not None:
            keep = np.zeros(256, dtype=np.uint8)
            keep[organ_ids] = organ_ids
            labels = keep[labels]  # other organs -> background, ids unchanged (one lookup, uint8)
        names = {i: self.spec.labels[i].name for i in organ_ids}
        stats = organ_stats(labels, ct, names, workers=torch.get_num_threads())
        source_labels = ct.to_source(labels, copy=False)  # a view: the result owns the map
        timings["postprocess"] += time.perf_counter() - t0

        label_info = {0: self.spec.labels[0]} | {i: self.spec.labels[i] for i in organ_ids}
        info = {**self.describe(opts), "input": self._input_info(ct), **info}
        return SegmentationResult(ct=ct, labels=source_labels, affine=np.array(ct.source.affine), label_info=label_info,
                                  stats=stats, timings=timings, info=info, warnings=warnings)

    def describe(self, options: SegmentOptions | None = None) -> dict[str, Any]:
        """Model, device, options and library versions: the constant part of report.json."""
        opts = options or self.options
        return {
            "model": {
                "source": self.source,
                "labels": {i: info.name for i, info in self.spec.labels.items()},
                "network": self.spec.network.model_dump(mode="json"),
                "preprocessing": self.spec.preprocessing.model_dump(mode="json"),
                "provenance": self.spec.provenance,
                "metrics": self.spec.metrics,
            },
            "device": str(self.device),
            "device_name": (
                torch.cuda.get_device_name(self.device)
                if self.device.type == "cuda"
                else platform.processor() or platform.machine()
            ),
            "options": opts.model_dump(mode="json"),
            "precision": "bf16" if opts.bf16 else "fp32",
            "versions": _versions(),
        }

    # ------------------------------------------------------------------ stages

    def _canonical_labels(
        self,
        ct: CTImage,
        opts: SegmentOptions,
        organ_ids: list[int],
        timings: dict[str, float],
        info: dict[str, Any],
        warnings: list[str],
    ) -> np.ndarray:
        """uint8 labels on ``ct.array``'s grid; with ``organs`` (and not ``fast``) only inside their box.

        The box comes from a pass at the fast spacing, so only a model trained there may set it: the
        locating pass of one that was not can miss most of an organ (measured: the cpu-demo real-sample
        model's fast masks agree with its full ones at mean Dice 0.04; with multi-scale training 0.85), and
        the fine pass would then leave out what lies outside the box.
        """
        prep = self.spec.preprocessing
        spacing = inference_spacing(prep, opts.fast)
        if opts.organs is None or opts.fast:
            return self._labels_on_grid(ct, spacing, opts, timings, info)
        if not prep.trained_fast:
            info["crop"] = "none: the model was not trained at the fast spacing, so it cannot locate the organs there"
            return self._labels_on_grid(ct, spacing, opts, timings, info)
        coarse = self._model_pass(ct, inference_spacing(prep, True), opts, timings, info)
        t0 = time.perf_counter()
        found = organ_box(coarse.labels, organ_ids, tuple(voxel_size(coarse.affine)), opts.crop_margin_mm)
        region = map_box(found, coarse.affine, ct.affine, ct.array.shape) if found is not None else None
        del coarse
        timings["postprocess"] += time.perf_counter() - t0
        if region is None:
            warnings.append("the coarse pass found none of the requested organs: segmenting the whole scan")
            return self._labels_on_grid(ct, spacing, opts, timings, info)
        info["crop"] = {"start": [s.start for s in region], "stop": [s.stop for s in region]}
        labels = np.zeros(ct.array.shape, dtype=np.uint8, order="F")  # the resampler's order (see resample.py)
        labels[region] = self._labels_on_grid(ct, spacing, opts, timings, info, region=region)
        return labels

    def _labels_on_grid(
        self, ct: CTImage, spacing: tuple[float, float, float], opts: SegmentOptions, timings: dict[str, float],
        info: dict[str, Any], region: Box | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Labels on ``ct.array[region]`` (default: all of it) from one network pass at ``spacing``."""
        result = self._model_pass(ct, spacing, opts, timings, info, region=region)
        t0 = time.perf_counter()
        grid_shape = tuple(s.stop - s.start for s in region) if region else ct.array.shape
        grid_affine = crop_affine(ct.affine, region) if region else ct.affine
        labels = resample_labels_interpolated(result.labels, result.probs, result.body, result.affine, grid_shape,
                                              grid_affine)
        timings["postprocess"] += time.perf_counter() - t0
        return labels

    def _model_pass(
        self,
        ct: CTImage,
        spacing: tuple[float, float, float],
        opts: SegmentOptions,
        timings: dict[str, float],
        info: dict[str, Any],
        region: Box | None = None,
    ) -> ModelPass:
        """Preprocess the whole scan, then run the windows over its body (only those touching ``region``).

        With ``region`` (a box of ``ct.array``) the windows stay where a full pass places them and read
        the whole scan around it, so the labels inside it are the full pass's; the model-grid box covers
        one more voxel on each side, the interpolation's reach.
        """
        prep = self.spec.preprocessing
        t0 = time.perf_counter()
        volume = network_input(ct.array, ct.affine, ct.source, prep, spacing)
        model_affine = np.asarray(volume.affine, dtype=np.float64)
        model_shape = tuple(int(s) for s in volume.shape[1:])

        body = body_box(volume)  # windows over the body only: air around it is background by definition
        body_shape = tuple(s.stop - s.start for s in body)
        in_body = None
        if region is not None:
            in_body = box_within(map_box(region, ct.affine, model_affine, model_shape, pad=1), body)
        timings["preprocess"] += time.perf_counter() - t0

        net = self.spec.network
        attention_cache = window_bias_bytes(prep.roi, net.num_heads, net.depths) if opts.fast_path else 0
        streams = window_streams(self.device, opts.fast_path)
        batch = choose_batch(prep.roi, net.feature_size, self.spec.out_channels, body_shape, self.device,
                             tta=opts.tta, requested=opts.sw_batch_size, reserved=attention_cache, streams=streams)
        tally = WindowTally()
        t0 = time.perf_counter()
        with self._lock:
            probs = predict_probabilities(
                self.network, volume.as_tensor()[(slice(None), *body)], prep.roi, device=self.device,
                sw_batch_size=batch.sw_batch_size, overlap=opts.overlap, fast_path=opts.fast_path, bf16=opts.bf16,
                tta=opts.tta, aggregate_on_device=batch.aggregate_on_device, streams=streams,
                region=in_body, out_channels=self.spec.out_channels, tally=tally,
            )
        del volume
        model_labels = np.zeros(model_shape, dtype=np.uint8)  # outside the body box: background
        model_labels[body] = argmax_labels(probs).numpy()
        timings["network"] += time.perf_counter() - t0
        info["passes"].append({
            "spacing": list(spacing),
            "input_shape": list(ct.array.shape),
            "model_shape": list(model_shape),
            "body_box": [[s.start, s.stop] for s in body],
            "roi": list(prep.roi),
            "windows_run": tally.run,
            "windows_placed": tally.total,
            "sw_batch_size": batch.sw_batch_size,
            "window_streams": streams,
            "window_bytes_estimate": batch.window_bytes,
            "logit_bytes": batch.output_bytes,
            "free_bytes": batch.free_bytes,
            "attention_cache_bytes": attention_cache,
            "passes_per_window": len(TTA_FLIPS) if opts.tta else 1,
        })
        return ModelPass(labels=model_labels, probs=probs, body=body, affine=model_affine)

    @staticmethod
    def _input_info(ct: CTImage) -> dict[str, Any]:
        meta = ct.meta
        out = {
            "path": meta.get("path"),
            "format": meta.get("format"),
            "shape": list(ct.source.shape),
            "spacing_mm": [round(s, 4) for s in ct.spacing],
            "orientation": ct.source.axcodes,
        }
        if meta.get("format") == "dicom":
            out |= {"series_uid": meta.get("series_uid"), "study_uid": meta.get("study_uid"),
                    "slices": len(meta.get("sop_instance_uids", []))}
        return out


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU; without it bf16 autocast is emulated and far slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def _versions() -> dict[str, str]:
    """Installed versions from package metadata: importing highdicom only to read its version costs 0.3 s."""
    out = {"asa-ct": models.__version__, "python": platform.python_version(), "torch": torch.__version__}
    for package in ("monai", "numpy", "nibabel", "pydicom", "highdicom"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - declared dependencies
            pass
    return out
