"""Inference: segment CT scans with a model directory (``asa segment``, and the API workers call).

``Segmenter.from_model_dir(RUN).segment(scan)`` returns a :class:`SegmentationResult` (label map in the
input's own space, per-organ stats, timings); :func:`write_outputs` writes NIfTI, DICOM-SEG, stats,
preview and report files. Modules: ``options`` (what a run may change), ``memory`` (window batch size),
``preprocess``, ``predict`` (sliding window, TTA, argmax), ``resample`` (label map between grids),
``region`` (organ crop), ``stats``, ``preview``, ``dicom_seg``, ``writers``, ``commands`` (the CLI).
"""

from models.inference.options import SegmentOptions
from models.inference.segmenter import ModelDirError, SegmentationResult, Segmenter
from models.inference.writers import write_outputs

__all__ = ["ModelDirError", "SegmentOptions", "SegmentationResult", "Segmenter", "write_outputs"]
