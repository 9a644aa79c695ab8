"""A DICOM RT Structure Set (RTSTRUCT) as a label map on its scan's grid.

Why: radiotherapy departments hold thousands of CTs with organs at risk contoured for treatment planning, as
RTSTRUCT files: the largest store of labelled CT most hospitals have. Finetuning on them, and scoring against
them, should need no conversion step.

- **ROIs are matched to label ids by name** (:func:`models.data.labels.match_labels`: case, word order, side
  abbreviations and TG-263 spellings such as "Kidney_R" or "A_Aorta" do not matter). A structure set always
  holds more than organs (BODY, targets, couch, markers), so a ROI that names no label is left out, with a
  warning naming it; one whose contours are all points or open lines is left out too. A structure set in
  which no ROI names a label is refused: it belongs to another label set, or to nothing here.
- **Contours are placed by their coordinates**, not by the images they reference (that reference is
  optional): in the scan's voxel coordinates every closed contour must lie on one slice of the grid, within
  :data:`SLICE_TOL` of a voxel; a contour between slices or off the scan is refused, naming the ROI.
- **Filled even-odd** on each slice: a pixel belongs to a ROI where its centre is inside an odd number of the
  ROI's contours on that slice, so a contour inside another is a hole, as planning systems read them.
  Where ROIs overlap, the higher label id wins, with a warning counting the voxels (as for DICOM-SEG).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from models.data.labels import match_labels
from models.io.reader import LPS_TO_RAS, CTImage, CTReadError

__all__ = ["SLICE_TOL", "fill_even_odd", "load_rtstruct_label"]

log = logging.getLogger(__name__)

_CONTOUR_DATA = Tag("ContourData")
SLICE_TOL = 0.1  # a contour further than this share of a voxel from a slice of the grid: not on that slice


def fill_even_odd(contours: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixel centres of a ``shape`` grid inside an odd number of ``contours`` ((n, 2) pixel coordinates).

    A scanline fill: on each row of centres (axis 0), the edges of all contours cross it at sorted positions,
    and the centres between the 1st and 2nd, 3rd and 4th... crossing are inside. Every edge counts once per
    row (half-open in axis 0), so a vertex on a row is not counted twice. Points may lie outside the grid (a
    body contour wider than the field of view): only centres on it count.
    """
    edges = [np.stack([p, np.roll(p, -1, axis=0)], axis=1) for p in contours if len(p) >= 3]
    inside = np.zeros(shape, dtype=bool)
    if not edges:
        return inside
    (r0, c0), (r1, c1) = np.concatenate(edges).transpose(1, 2, 0)
    low, high = np.minimum(r0, r1), np.maximum(r0, r1)
    first = np.maximum(np.ceil(low).astype(np.int64), 0)  # rows of centres with low <= row < high
    stop = np.minimum(np.ceil(high).astype(np.int64), shape[0])
    spans = np.maximum(stop - first, 0)
    edge = np.repeat(np.arange(len(spans)), spans)
    row = first[edge] + (np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans))
    t = (row - r0[edge]) / (r1[edge] - r0[edge])
    crossing = c0[edge] + t * (c1[edge] - c0[edge])
    order = np.lexsort((crossing, row))
    row, crossing = row[order].reshape(-1, 2), crossing[order].reshape(-1, 2)  # even per row, so pairs
    start = np.clip(np.floor(crossing[:, 0]).astype(np.int64) + 1, 0, shape[1])  # centres strictly inside
    end = np.clip(np.ceil(crossing[:, 1]).astype(np.int64), 0, shape[1])
    keep = end > start
    counts = np.zeros((shape[0], shape[1] + 1), dtype=np.int32)
    np.add.at(counts, (row[keep, 0], start[keep]), 1)
    np.add.at(counts, (row[keep, 0], end[keep]), -1)
    inside[:] = np.cumsum(counts, axis=1)[:, :-1] > 0
    return inside


def _coordinates(contour: Dataset) -> np.ndarray:
    """ContourData as floats, parsed from the stored text: pydicom's own parsing makes and checks a decimal
    object per coordinate, most of the time of reading a long structure set."""
    element = contour.get_item(_CONTOUR_DATA)
    value = element.value if element is not None else None
    if isinstance(value, bytes):
        return np.array(value.split(b"\\"), dtype=np.float64)
    return np.asarray(value, dtype=np.float64)


def _roi_names(ds: Dataset, path: Path) -> dict[int, str]:
    rois = ds.get("StructureSetROISequence") or []
    if not rois or "ROIContourSequence" not in ds:
        raise CTReadError(f"RTSTRUCT {path} has no ROIs with contours (StructureSetROISequence, ROIContourSequence)")
    return {int(r.ROINumber): str(r.get("ROIName", "") or "") for r in rois}


def _roi_ids(roi_names: dict[int, str], names: Mapping[int, str] | None, path: Path) -> dict[int, int]:
    """ROI number -> label id for the ROIs that name a label (the others are logged and left out)."""
    if not names:
        raise CTReadError(
            f"{path} is an RTSTRUCT: its ROIs are matched to label ids by name, and no label names are known "
            "(give the dataset's 'labels' in its dataset.json)"
        )
    matched = match_labels({n: [name] for n, name in roi_names.items()}, names)
    ids = {number: label for number, label in matched.items() if label is not None}
    if not ids:
        known = ", ".join(f"{i} {n}" for i, n in sorted(names.items()) if i != 0)
        raise CTReadError(
            f"RTSTRUCT {path}: no ROI names a label (ROIs: {', '.join(sorted(roi_names.values()))}; labels: {known})"
        )
    left_out = sorted(roi_names[n] for n, label in matched.items() if label is None)
    if left_out:
        log.warning("RTSTRUCT %s: ROIs that name no label, left out: %s", path, ", ".join(left_out))
    return ids


def _slice_of(
    points: np.ndarray, shape: tuple[int, ...], where: str
) -> tuple[int, int, np.ndarray]:  # fmt: skip
    """The grid axis and index of the slice a contour lies on, and its points in that slice's two other axes."""
    spread = points.max(axis=0) - points.min(axis=0)
    axis = int(np.argmin(spread))
    level = float(np.mean(points[:, axis]))
    index = round(level)
    if spread[axis] > 2 * SLICE_TOL or abs(level - index) > SLICE_TOL:
        raise CTReadError(
            f"{where} does not lie on a slice of the scan's grid (voxel coordinate {level:.2f} on axis {axis}, "
            f"spread {spread[axis]:.2f}; tolerance {SLICE_TOL} voxel): contoured on another scan or between slices"
        )
    if not 0 <= index < shape[axis]:
        raise CTReadError(f"{where} lies on slice {index} of axis {axis}, outside the scan (shape {tuple(shape)})")
    return axis, index, np.delete(points, axis, axis=1)


def load_rtstruct_label(path: str | Path, like: CTImage, names: Mapping[int, str] | None) -> np.ndarray:
    """The label map (int16, ``like.array``'s voxel order) an RTSTRUCT's organ contours describe on ``like``."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise CTReadError(f"cannot read RTSTRUCT {path}: {type(exc).__name__}: {exc}") from exc
    roi_names = _roi_names(ds, path)
    ids = _roi_ids(roi_names, names, path)
    to_voxel = np.linalg.inv(like.affine) @ LPS_TO_RAS
    shape = like.array.shape
    out = np.zeros(shape, dtype=np.int16, order="F")  # axial planes contiguous, as NIfTI labels are
    overlap, skipped = 0, defaultdict(int)
    for item in ds.ROIContourSequence:
        number = int(item.ReferencedROINumber)
        if number not in ids:
            continue
        planes: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
        for c, contour in enumerate(item.get("ContourSequence") or []):
            kind = str(contour.get("ContourGeometricType", ""))
            if kind != "CLOSED_PLANAR":
                skipped[kind or "untyped"] += 1
                continue
            where = f"RTSTRUCT {path}, ROI '{roi_names[number]}', contour {c + 1}"
            try:
                lps = _coordinates(contour).reshape(-1, 3)
            except (TypeError, ValueError) as exc:
                raise CTReadError(f"{where}: no ContourData, or not x, y, z triples") from exc
            if len(lps) < 3:
                continue
            voxels = (np.column_stack([lps, np.ones(len(lps))]) @ to_voxel.T)[:, :3]
            axis, index, flat = _slice_of(voxels, shape, where)
            planes[(axis, index)].append(flat)
        for (axis, index), contours in planes.items():
            plane_shape = tuple(n for d, n in enumerate(shape) if d != axis)
            points = np.concatenate(contours)  # only the contours' box of the plane can change
            lo = np.clip(np.floor(points.min(axis=0)).astype(int), 0, plane_shape)
            hi = np.clip(np.ceil(points.max(axis=0)).astype(int) + 1, 0, plane_shape)
            box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
            mask = fill_even_odd(contours, plane_shape)[box]
            at: list[slice | int] = [slice(None)] * 3
            at[axis] = index
            region = out[tuple(at)][box]  # a view: writing to it writes to ``out``
            overlap += int((mask & (region > 0) & (region != ids[number])).sum())
            np.maximum(region, np.int16(ids[number]), out=region, where=mask)
    if skipped:
        log.info("RTSTRUCT %s: contours that are not closed planes left out: %s", path, dict(skipped))
    if overlap:
        log.warning("RTSTRUCT %s: ROIs overlap in %d voxels; the higher label id was kept there", path, overlap)
    return out
