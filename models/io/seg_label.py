"""A DICOM Segmentation (DICOM-SEG) file as a label map on its scan's grid.

Why: masks drawn in 3D Slicer or OHIF, or kept in a PACS, are DICOM-SEG files, and a researcher should be able
to finetune on them and evaluate against them without converting them first. A SEG differs from a label
NIfTI in two ways, and each is handled here rather than left to the user:

- **Segments are named, not numbered by the label set.** Segment numbers are 1..N in the order the tool
  wrote them, so they are matched to the label ids by name: the segment's label, else its property type
  (with laterality, "Right Kidney"). Case, spacing, underscores, word order, side abbreviations and TG-263
  spellings do not matter ("Kidney_R" is "right kidney": :func:`models.data.labels.organ_key`). A segment
  that names no label is an error: silently dropping it would teach the model that its voxels are background.
- **Frames are placed by position.** Each frame carries its own position, orientation and spacing;
  empty frames are often left out and the rest may come in any order. Every frame must lie on a plane of
  the scan's grid (within :data:`GRID_TOL` of a voxel at its corners); a SEG on another grid is refused, never
  resampled silently.

Segments may overlap (a tumour inside its organ); where they do, the higher label id wins, as in the MSD
and KiTS label conventions, and a warning counts the voxels. BINARY, FRACTIONAL (at least half the maximum
counts as inside) and LABELMAP segmentations are read; frames are decoded one at a time, so memory is the
label map, the stored (bit-packed or compressed) frames and one decoded frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels

from models.data.labels import match_labels
from models.io.dicom import frame_headers
from models.io.reader import LPS_TO_RAS, CTImage, CTReadError

__all__ = ["GRID_TOL", "dicom_modality", "load_seg_label", "segment_ids"]

log = logging.getLogger(__name__)

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
GRID_TOL = 0.1  # a frame corner further than this share of a voxel from a voxel centre: not on the scan's grid


def dicom_modality(path: Path) -> str | None:
    """The modality of a DICOM file ("SEG" for either Segmentation storage class), or None when it is no DICOM."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # not DICOM at all: the caller reads it as NIfTI/NRRD and reports that
        return None
    sop_class = str(ds.get("SOPClassUID", "") or getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID", ""))
    if sop_class in (SEG_STORAGE, LABELMAP_SEG_STORAGE):
        return "SEG"
    return str(ds.get("Modality", "") or "unknown")


def _segment_names(item: Dataset) -> list[str]:
    """What a segment may be called: its label, then its property type with and without laterality."""
    names = [str(item.get("SegmentLabel", "") or "")]
    types = item.get("SegmentedPropertyTypeCodeSequence")
    if types:
        meaning = str(types[0].get("CodeMeaning", "") or "")
        modifiers = types[0].get("SegmentedPropertyTypeModifierCodeSequence") or item.get(
            "SegmentedPropertyTypeModifierCodeSequence"
        )
        if modifiers and meaning:
            names.append(f"{modifiers[0].get('CodeMeaning', '')} {meaning}")
        names.append(meaning)
    return [n for n in names if n.strip()]


def segment_ids(ds: Dataset, names: Mapping[int, str] | None, path: Path) -> dict[int, int]:
    """Segment number -> label id, by name; :class:`CTReadError` naming every segment that matches no label."""
    segments = ds.get("SegmentSequence") or []
    if not segments:
        raise CTReadError(f"DICOM-SEG {path} describes no segments (no SegmentSequence)")
    if not names:
        raise CTReadError(
            f"{path} is a DICOM-SEG: its segments are matched to label ids by name, and no label names are known "
            "(give the dataset's 'labels' in its dataset.json)"
        )
    candidates = {  # segment 0: a label map's background, where it is described
        int(item.SegmentNumber): _segment_names(item) for item in segments if int(item.get("SegmentNumber", 0)) != 0
    }
    matched = match_labels(candidates, names)
    ids = {number: label for number, label in matched.items() if label is not None}
    unknown = [f"{n} '{(candidates[n] or [''])[0]}'" for n, label in matched.items() if label is None]
    if unknown:
        known = ", ".join(f"{i} {n}" for i, n in sorted(names.items()) if i != 0)
        raise CTReadError(
            f"DICOM-SEG {path}: segment(s) {', '.join(unknown)} match no label name; a segment's label or "
            f"property type must name one of the labels ({known})"
        )
    return ids


def _frame_index(
    header: Dataset, inverse: np.ndarray, shape: tuple[int, ...], path: Path, frame: int
) -> tuple[tuple[slice, ...], Callable[[np.ndarray], np.ndarray]]:
    """Where frame ``frame`` lies in the scan's voxel array: the slices of that plane (a view, one voxel thick),
    and how to turn the frame's (row, column) pixels into that view's shape and order.

    The frame's pixel (row r, column c) sits at ``P + c * dc * X + r * dr * Y`` (DICOM patient space, LPS);
    on the scan's grid that must be a voxel centre, with rows and columns running along two of its axes.
    """
    where = f"DICOM-SEG {path}, frame {frame + 1}"
    try:
        position = np.asarray(header.ImagePositionPatient, dtype=np.float64)
        orientation = np.asarray(header.ImageOrientationPatient, dtype=np.float64)
        dr, dc = (float(v) for v in header.PixelSpacing)
    except (AttributeError, TypeError, ValueError) as exc:
        raise CTReadError(f"{where}: no plane position, orientation or pixel spacing, so it cannot be placed") from exc
    rows, cols = int(header.Rows), int(header.Columns)

    def voxel(lps: np.ndarray) -> np.ndarray:
        return (inverse @ LPS_TO_RAS @ np.append(lps, 1.0))[:3]

    origin = voxel(position)
    col_step = voxel(position + dc * orientation[:3]) - origin
    row_step = voxel(position + dr * orientation[3:]) - origin
    corners = np.array([origin + c * col_step + r * row_step for r in (0, rows - 1) for c in (0, cols - 1)])
    steps = np.rint([col_step, row_step])
    axes = [int(np.argmax(np.abs(s))) for s in steps]
    on_grid = (
        np.abs(corners - np.rint(corners)).max() <= GRID_TOL
        and all(np.abs(s).sum() == 1 for s in steps)
        and axes[0] != axes[1]
    )
    if not on_grid:
        raise CTReadError(
            f"{where} does not lie on a plane of the scan's grid (its corners fall at voxel {np.round(corners, 2)}; "
            f"tolerance {GRID_TOL} voxel): the SEG was made on another scan or grid, and is not resampled"
        )
    start = np.rint(origin).astype(int)
    normal = 3 - sum(axes)
    # first and last voxel index along each axis; basic slices (not fancy indexing) keep the plane a view
    ends = {axes[0]: (start[axes[0]], start[axes[0]] + int(steps[0][axes[0]]) * (cols - 1)),
            axes[1]: (start[axes[1]], start[axes[1]] + int(steps[1][axes[1]]) * (rows - 1)),
            normal: (start[normal], start[normal])}  # fmt: skip
    if any(min(ends[d]) < 0 or max(ends[d]) >= shape[d] for d in range(3)):
        raise CTReadError(f"{where} lies (partly) outside the scan, whose canonical shape is {tuple(shape)}")
    view = tuple(slice(min(ends[d]), max(ends[d]) + 1) for d in range(3))
    order = [axes[1], axes[0], normal]  # the frame's (row, column) and the added plane axis
    perm = [order.index(d) for d in range(3)]
    flip_rows, flip_cols = ends[axes[1]][1] < ends[axes[1]][0], ends[axes[0]][1] < ends[axes[0]][0]

    def place(pixels: np.ndarray) -> np.ndarray:
        pixels = pixels[::-1] if flip_rows else pixels
        pixels = pixels[:, ::-1] if flip_cols else pixels
        return pixels[:, :, None].transpose(perm)

    return view, place


def load_seg_label(path: str | Path, like: CTImage, names: Mapping[int, str] | None) -> np.ndarray:
    """The label map (int16, ``like.array``'s voxel order) a DICOM-SEG describes on the scan ``like``.

    ``names`` (label id -> name) says which id each segment becomes; see the module docstring for the rules.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)  # pixels too: a SEG's bit-packed or 8-bit frames are small beside the scan
    except Exception as exc:
        raise CTReadError(f"cannot read DICOM-SEG {path}: {type(exc).__name__}: {exc}") from exc
    _check_length(ds, path)
    kind = str(ds.get("SegmentationType", "")).upper()
    if kind not in ("BINARY", "FRACTIONAL", "LABELMAP"):
        raise CTReadError(f"DICOM-SEG {path}: unsupported SegmentationType '{kind}'")
    ids = segment_ids(ds, names, path)
    headers = frame_headers(str(path), ds) if "PerFrameFunctionalGroupsSequence" in ds else [ds]
    inverse = np.linalg.inv(like.affine)
    out = np.zeros(like.array.shape, dtype=np.int16, order="F")  # axial planes contiguous, as NIfTI labels are
    lut = np.zeros(max(ids) + 1, dtype=np.int16)
    for number, label in ids.items():
        lut[number] = label
    threshold = 0.5 * float(ds.get("MaximumFractionalValue", 1) or 1)
    overlap = 0
    try:
        frames = iter_pixels(ds)
        for f, header in enumerate(headers):
            pixels = next(frames)
            if kind == "LABELMAP":
                if pixels.max() >= len(lut):
                    raise CTReadError(f"DICOM-SEG {path}, frame {f + 1}: value {pixels.max()} is no segment number")
                labels = lut[pixels]
            else:
                number = _frame_segment(ds, f, path)
                if number not in ids:
                    raise CTReadError(f"DICOM-SEG {path}, frame {f + 1}: segment {number} is not described")
                labels = np.where(pixels >= threshold if kind == "FRACTIONAL" else pixels > 0, lut[number], 0)
            if not labels.any():
                continue
            view, place = _frame_index(header, inverse, out.shape, path, f)
            region = out[view]  # a view: writing to it writes to ``out``
            new = place(labels.astype(np.int16))
            overlap += int(((new > 0) & (region > 0) & (new != region)).sum())
            np.maximum(region, new, out=region)  # the higher label id wins an overlap
    except CTReadError:
        raise
    except Exception as exc:  # decoding: truncated pixel data, a codec that is not installed...
        raise CTReadError(f"cannot decode the frames of DICOM-SEG {path}: {type(exc).__name__}: {exc}") from exc
    if overlap:
        log.warning("DICOM-SEG %s: segments overlap in %d voxels; the higher label id was kept there", path, overlap)
    return out


def _check_length(ds: Dataset, path: Path) -> None:
    """Uncompressed frames that end early: pydicom decodes them without complaint (pads or wraps)."""
    if "PixelData" not in ds:
        raise CTReadError(f"DICOM-SEG {path} has no pixel data")
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is None or syntax.is_encapsulated:
        return  # compressed: the decoder fails on a short stream (and without a syntax, pydicom refuses)
    bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated)
    if len(ds.PixelData) < (bits + 7) // 8:
        raise CTReadError(
            f"DICOM-SEG {path}: the pixel data ends early ({len(ds.PixelData)} of {(bits + 7) // 8} bytes; "
            "truncated file?)"
        )


def _frame_segment(ds: Dataset, frame: int, path: Path) -> int:
    """The segment number a BINARY/FRACTIONAL frame belongs to (its own functional group, else the shared one:
    a SEG of one segment may say it once)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for groups in (per_frame[frame : frame + 1], shared[:1]):
        items = groups[0].get("SegmentIdentificationSequence") if groups else None
        if items and "ReferencedSegmentNumber" in items[0]:
            return int(items[0].ReferencedSegmentNumber)
    raise CTReadError(f"DICOM-SEG {path}, frame {frame + 1}: no segment identification (SegmentIdentificationSequence)")
