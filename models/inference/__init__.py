"""Inference: segment CT scans with a model directory (``asa segment``, and the API workers call).

``Segmenter.from_model_dir(RUN).segment(scan)`` returns a :class:`SegmentationResult` (label map in the
input's own space, per-organ stats, timings); :func:`write_outputs` writes NIfTI, DICOM-SEG, stats,
preview and report files. Modules: ``options`` (what a run may change), ``memory`` (window batch size),
``preprocess``, ``predict`` (sliding window, TTA, argmax), ``resample`` (label map between grids),
``region`` (organ crop), ``stats``, ``preview``, ``dicom_seg``, ``writers``, ``commands`` (the CLI).

Its names load on first use (PEP 562): ``asa`` imports ``models.inference.commands`` for every
command, and importing the segmenter means importing torch and MONAI (2 s), which ``asa --help`` and
``asa segment``'s read-ahead of the first scan (:mod:`models.io.read_ahead`) should not wait for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.inference.options import SegmentOptions
    from models.inference.segmenter import ModelDirError, SegmentationResult, Segmenter
    from models.inference.writers import write_outputs

_HOMES = {
    "ModelDirError": "models.inference.segmenter",
    "SegmentOptions": "models.inference.options",
    "SegmentationResult": "models.inference.segmenter",
    "Segmenter": "models.inference.segmenter",
    "write_outputs": "models.inference.writers",
}

__all__ = ["ModelDirError", "SegmentOptions", "SegmentationResult", "Segmenter", "write_outputs"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
