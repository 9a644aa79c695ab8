"""DICOM CT series -> :class:`~models.io.reader.CTImage`, with every way a series breaks named.

Rules (why): the geometry comes only from ImageOrientationPatient/ImagePositionPatient/PixelSpacing
because file names and InstanceNumber are routinely wrong or reversed; slices are ordered by their
position along the slice normal (row x column direction); the slice step is measured from the
positions (SliceThickness is not the spacing); RescaleSlope/Intercept are applied per slice.
A series that cannot be put on a regular grid (gaps, duplicates, mixed sizes, origins off one line) is an
error rather than a silently wrong volume. A gantry-tilted series keeps its own, sheared grid (the slice
axis leans along the table), so masks lie on the source slices; the model sees it resampled to an
orthogonal grid (MONAI ``Spacing`` removes the shear). An enhanced (multi-frame) CT image is read frame
by frame: each frame gets the classic header its functional groups describe, and from there on is a
slice like any other. A scout (ImageType LOCALIZER) filed in the series is skipped.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from models.io.dicom_pixels import NoPixelData, decode_multiframe, decode_series, decode_workers
from models.io.reader import LPS_TO_RAS, CTImage, CTReadError, canonicalise

__all__ = ["frame_headers", "load_dicom_files", "load_dicom_folder", "load_dicom_zip"]

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: an index, not an image
STRAIGHT_DEG = 0.05  # slice origins within this angle of the normal: an orthogonal stack
MAX_TILT_DEG = 45.0  # gantries tilt up to about 30 degrees; a steeper lean is not a tilted acquisition
LINE_TOL = 0.1  # slice origins further than this share of a pixel off one straight line: not one stack
GAP_FACTOR = 1.5  # a step larger than this x median step means slices are missing
UNEVEN_REL_TOL = 0.01  # relative spread of steps above which spacing is reported as uneven

# where an enhanced (multi-frame) image keeps, per frame or shared, what a classic slice has at its top level
_FRAME_GROUPS = {
    "ImagePositionPatient": "PlanePositionSequence",
    "ImageOrientationPatient": "PlaneOrientationSequence",
    "PixelSpacing": "PixelMeasuresSequence",
    "SliceThickness": "PixelMeasuresSequence",
    "SpacingBetweenSlices": "PixelMeasuresSequence",
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
    "WindowCenter": "FrameVOILUTSequence",
    "WindowWidth": "FrameVOILUTSequence",
}
_LABELS = ("SEG", "RTSTRUCT")  # modalities of label objects, which are read by models.io.reader.load_label
# what the reader reads from a slice's top level besides those: copied into every frame's header
_IMAGE_TAGS = ("SOPInstanceUID", "SOPClassUID", "Modality", "SeriesInstanceUID", "StudyInstanceUID",
               "FrameOfReferenceUID", "SeriesDescription", "Rows", "Columns", "GantryDetectorTilt", "ImageType")


@dataclass
class _Slice:
    """One DICOM file's header (no pixels yet) and how to re-open it for the pixels.

    A frame of an enhanced (multi-frame) image is a slice too: ``frame`` is its 0-based index in ``path``
    and ``header`` the classic header its functional groups describe (:func:`_frames_of`).
    """

    path: str
    header: Dataset
    opener: Callable[[], BinaryIO | str]
    frame: int | None = None

    @property
    def name(self) -> str:
        """The file, and the frame in it, for messages."""
        return self.path if self.frame is None else f"{self.path} (frame {self.frame + 1})"

    @property
    def series_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", "") or "")

    @property
    def sop_uid(self) -> str:
        """SOPInstanceUID, or the file meta copy when anonymisation blanked the dataset one."""
        uid = str(self.header.get("SOPInstanceUID", "") or "")
        if not uid and hasattr(self.header, "file_meta"):
            uid = str(self.header.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
        return uid

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", "") or "")


# --------------------------------------------------------------------------- entry points


def load_dicom_folder(folder: Path, series_uid: str | None = None) -> CTImage:
    """All files below ``folder`` (recursive); stray non-DICOM files are skipped with a warning."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise CTReadError(f"empty folder: {folder} contains no files")
    entries = [(str(p), _file_opener(p)) for p in files]
    return _load(entries, origin=str(folder), strict=False, series_uid=series_uid)


def load_dicom_files(files: Sequence[Path], series_uid: str | None = None) -> CTImage:
    """Explicit file list: every file must be DICOM (the caller chose them)."""
    for p in files:
        if not p.is_file():
            raise CTReadError(f"no such DICOM file: {p}")
    entries = [(str(p), _file_opener(p)) for p in files]
    origin = str(files[0]) if len(files) == 1 else f"{len(files)} files in {files[0].parent}"
    return _load(entries, origin=origin, strict=True, series_uid=series_uid)


def load_dicom_zip(path: Path, series_uid: str | None = None) -> CTImage:
    """A .zip of DICOM files (any folder layout inside); read in memory, nothing is extracted."""
    try:
        zf = zipfile.ZipFile(path)
        names = [i.filename for i in zf.infolist() if not i.is_dir() and not Path(i.filename).name.startswith(".")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise CTReadError(f"cannot open zip file {path}: {exc}") from exc
    if not names:
        raise CTReadError(f"empty zip file: {path} contains no files")

    def opener(name: str) -> Callable[[], BinaryIO]:
        return lambda: io.BytesIO(zf.read(name))

    entries = [(f"{path}!{n}", opener(n)) for n in sorted(names)]
    return _load(entries, origin=str(path), strict=False, series_uid=series_uid)


def _file_opener(p: Path) -> Callable[[], str]:
    return lambda: str(p)


# --------------------------------------------------------------------------- pipeline


def _load(
    entries: list[tuple[str, Callable[[], BinaryIO | str]]],
    origin: str,
    strict: bool,
    series_uid: str | None,
) -> CTImage:
    warnings: list[str] = []
    slices = _read_headers(entries, origin, strict, warnings)
    groups = _group_series(slices)
    chosen_uid = _choose_series(groups, origin, series_uid, warnings)
    series = groups[chosen_uid]
    label = _series_label(chosen_uid, series, origin)
    series = _without_localizers(series, label, warnings)
    _check_consistent(series, label)
    ordered, affine = _order_and_geometry(series, label, warnings)
    volume = _read_pixels(ordered, label)
    meta = _series_meta(ordered, groups, chosen_uid, origin)
    sop_uids = meta["sop_instance_uids"]
    if len({(s.sop_uid, s.frame) for s in ordered}) != len(ordered) or not all(sop_uids):
        warnings.append(f"{label}: SOPInstanceUIDs are missing or repeated; reference slices by meta['files']")
    return canonicalise(volume, affine, meta, warnings, slice_order=sop_uids)


def _read_headers(
    entries: list[tuple[str, Callable[[], BinaryIO | str]]], origin: str, strict: bool, warnings: list[str]
) -> list[_Slice]:
    """Parse every header; non-DICOM files are an error when named explicitly, else skipped."""
    slices: list[_Slice] = []
    skipped: list[str] = []
    for name, opener in entries:
        try:
            ds = pydicom.dcmread(opener(), stop_before_pixels=True)
        except InvalidDicomError as exc:
            if strict:
                raise CTReadError(f"not a DICOM file (nor NIfTI/NRRD/MetaImage): {name}") from exc
            skipped.append(name)
            continue
        except Exception as exc:  # truncated/garbled files raise EOFError, struct.error, ValueError...
            raise CTReadError(f"unreadable or corrupt DICOM file {name}: {type(exc).__name__}: {exc}") from exc
        sop_class = str(getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID", ""))
        if sop_class == MEDIA_STORAGE_DIRECTORY:
            continue
        missing = [t for t in ("SOPInstanceUID", "Modality") if t not in ds]
        if missing:
            # pydicom reads truncated files without complaint; every image instance has these (type 1)
            raise CTReadError(
                f"unreadable or corrupt DICOM file {name}: incomplete header (no {', '.join(missing)})"
            )
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            slices.extend(_frames_of(name, ds, opener))
        else:
            slices.append(_Slice(path=name, header=ds, opener=opener))
    if not slices:
        hint = f" ({len(skipped)} non-DICOM files, e.g. {skipped[0]})" if skipped else ""
        raise CTReadError(f"no DICOM files found in {origin}{hint}")
    if skipped:
        shown = ", ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        warnings.append(f"skipped {len(skipped)} non-DICOM file(s) in {origin}: {shown}")
    return slices


def _frames_of(name: str, ds: Dataset, opener: Callable[[], BinaryIO | str]) -> list[_Slice]:
    """An enhanced (multi-frame) image as one slice per frame, with the header a classic slice would have.

    Why: position, orientation, spacing and rescale live in each frame's functional groups (or the
    shared ones), and frames may be stored in any order. Giving each frame a classic header lets the
    one ordering, gap, tilt and rescale logic of this module handle both kinds of series.
    """
    return [_Slice(path=name, header=h, opener=opener, frame=f) for f, h in enumerate(frame_headers(name, ds))]


def frame_headers(name: str, ds: Dataset) -> list[Dataset]:
    """The classic header (position, orientation, spacing, rescale...) of every frame of a multi-frame ``ds``.

    A frame's own functional group wins over the shared one. ``name`` (the file) is for the error raised
    when the frames are not described one by one.
    """
    n = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n:
        found = "none" if per_frame is None else len(per_frame)
        raise CTReadError(
            f"multi-frame DICOM file {name} has {n} frames and {found} per-frame functional groups: "
            "its frames cannot be placed (only enhanced images, which describe every frame, are read)"
        )
    shared_groups = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else Dataset()
    headers = []
    for f in range(n):
        header = Dataset()
        for keyword in _IMAGE_TAGS:
            if keyword in ds:
                header[keyword] = ds[keyword]
        for keyword, group in _FRAME_GROUPS.items():
            for functional in (per_frame[f], shared):  # the frame's own group wins over the shared one
                items = functional.get(group)
                if items and keyword in items[0]:
                    header[keyword] = items[0][keyword]
                    break
        if hasattr(ds, "file_meta"):
            header.file_meta = ds.file_meta
        headers.append(header)
    return headers


def _group_series(slices: list[_Slice]) -> dict[str, list[_Slice]]:
    groups: dict[str, list[_Slice]] = defaultdict(list)
    for s in slices:
        groups[s.series_uid].append(s)
    return dict(groups)


def _series_summary(uid: str, series: list[_Slice]) -> dict[str, Any]:
    h = series[0].header
    return {
        "uid": uid,
        "modality": str(h.get("Modality", "") or ""),
        "description": str(h.get("SeriesDescription", "") or ""),
        "n": len(series),
    }


def _choose_series(
    groups: dict[str, list[_Slice]], origin: str, series_uid: str | None, warnings: list[str]
) -> str:
    """Explicit UID, else the CT series with most slices (warning lists the others)."""
    if series_uid is not None:
        if series_uid not in groups:
            found = ", ".join(f"{u or '<none>'} ({_series_summary(u, s)['modality']}, n={len(s)})"
                              for u, s in groups.items())
            raise CTReadError(f"series {series_uid} not found in {origin}; found: {found}")
        if groups[series_uid][0].modality != "CT":
            raise CTReadError(
                f"series {series_uid} in {origin} has modality {groups[series_uid][0].modality or '<missing>'}, "
                "not CT"
            )
        return series_uid
    ct = {u: s for u, s in groups.items() if s[0].modality == "CT"}
    if not ct:
        mods = sorted({s[0].modality or "<missing>" for s in groups.values()})
        if len(groups) == 1:
            uid = next(iter(groups))
            hint = " (a label: give it as a dataset's 'label', with the scan as 'image')" if mods[0] in _LABELS else ""
            raise CTReadError(
                f"series {uid or '<no SeriesInstanceUID>'} in {origin} has modality {mods[0]}, not CT "
                f"(e.g. file {groups[uid][0].name}){hint}"
            )
        raise CTReadError(f"no CT series in {origin}; found modalities {', '.join(mods)}")
    chosen = max(ct, key=lambda u: len(ct[u]))
    if len(ct) > 1:
        others = "; ".join(
            f"{u or '<none>'} '{_series_summary(u, s)['description']}' n={len(s)}" for u, s in ct.items() if u != chosen
        )
        warnings.append(
            f"{len(ct)} CT series in {origin}: using {chosen or '<none>'} ({len(ct[chosen])} slices); "
            f"others: {others}; pass series_uid / --series to choose"
        )
    if not chosen:
        warnings.append(f"the CT series in {origin} has no SeriesInstanceUID; all such files were taken as one series")
    return chosen


def _series_label(uid: str, series: list[_Slice], origin: str) -> str:
    return f"series {uid or '<no SeriesInstanceUID>'} in {origin}"


def _is_localizer(s: _Slice) -> bool:
    value = s.header.get("ImageType") or []
    return "LOCALIZER" in (str(v).upper() for v in ([value] if isinstance(value, str) else value))


def _without_localizers(series: list[_Slice], label: str, warnings: list[str]) -> list[_Slice]:
    """Drop scout images (ImageType LOCALIZER) that some scanners file in the axial series, with a warning.

    Why: a scout has another orientation and size, so keeping it would refuse the whole series as mixed.
    """
    scouts = [s for s in series if _is_localizer(s)]
    if not scouts:
        return series
    if len(scouts) == len(series):
        raise CTReadError(f"{label} holds only localizer (scout) images, e.g. {scouts[0].name}: not a CT volume")
    warnings.append(f"{label}: skipped {len(scouts)} localizer (scout) image(s), e.g. {scouts[0].name}")
    return [s for s in series if not _is_localizer(s)]


def _check_consistent(series: list[_Slice], label: str) -> None:
    """Everything that must be identical across slices for one regular grid."""
    for s in series:
        h = s.header
        missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
                   if t not in h]
        if missing:
            raise CTReadError(f"DICOM file {s.name} ({label}) lacks {', '.join(missing)}")
    ref = series[0]
    for s in series[1:]:
        if (s.header.Rows, s.header.Columns) != (ref.header.Rows, ref.header.Columns):
            raise CTReadError(
                f"mixed image sizes in {label}: {ref.name} is {ref.header.Rows}x{ref.header.Columns}, "
                f"{s.name} is {s.header.Rows}x{s.header.Columns}"
            )
        if not np.allclose(_floats(s.header.ImageOrientationPatient), _floats(ref.header.ImageOrientationPatient),
                           atol=1e-4):
            raise CTReadError(
                f"mixed orientations in {label}: {ref.name} {list(ref.header.ImageOrientationPatient)} vs "
                f"{s.name} {list(s.header.ImageOrientationPatient)}"
            )
        if not np.allclose(_floats(s.header.PixelSpacing), _floats(ref.header.PixelSpacing), rtol=1e-4):
            raise CTReadError(
                f"mixed pixel spacing in {label}: {ref.name} {list(ref.header.PixelSpacing)} vs "
                f"{s.name} {list(s.header.PixelSpacing)}"
            )


def _floats(value: Any) -> np.ndarray:
    return np.asarray([float(v) for v in value], dtype=np.float64)


def _order_and_geometry(series: list[_Slice], label: str, warnings: list[str]) -> tuple[list[_Slice], np.ndarray]:
    """Sort along the slice normal, validate the steps, and build the LPS->RAS source affine.

    Source axes are (column i, row j, slice k): IOP[:3] is the direction in which the column
    index grows (scaled by PixelSpacing[1]), IOP[3:] the one in which the row index grows
    (scaled by PixelSpacing[0]).
    """
    h0 = series[0].header
    iop = _floats(h0.ImageOrientationPatient)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise CTReadError(f"invalid ImageOrientationPatient {list(iop)} in {series[0].name} ({label})")
    positions = np.stack([_floats(s.header.ImagePositionPatient) for s in series])
    dist = positions @ normal
    order = np.argsort(dist, kind="stable")
    ordered = [series[i] for i in order]
    positions, dist = positions[order], dist[order]
    step = _check_steps(ordered, dist, label, warnings)
    slice_axis = _slice_axis(ordered, positions, dist, normal, step, label, warnings)
    ps = _floats(h0.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps[1]
    lps[:3, 1] = col_dir * ps[0]
    lps[:3, 2] = slice_axis
    lps[:3, 3] = positions[0]
    return ordered, LPS_TO_RAS @ lps


def _check_steps(ordered: list[_Slice], dist: np.ndarray, label: str, warnings: list[str]) -> float:
    """Duplicates and gaps are errors (they would misplace anatomy); uneven steps a warning."""
    if len(ordered) == 1:
        h = ordered[0].header
        step = float(h.get("SpacingBetweenSlices", 0) or h.get("SliceThickness", 0) or 1.0)
        warnings.append(f"single-slice {label}: slice step {step} mm taken from the header")
        return step
    steps = np.diff(dist)
    dup = np.flatnonzero(steps < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise CTReadError(
            f"duplicate slice position in {label}: {ordered[i].name} and {ordered[i + 1].name} are both at "
            f"{dist[i]:.3f} mm along the slice normal ({dup.size} duplicate(s))"
        )
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        i = int(gaps[0])
        n_missing = round(steps[i] / median) - 1
        raise CTReadError(
            f"missing slice(s) in {label}: gap of {steps[i]:.3f} mm (median step {median:.3f} mm, about "
            f"{n_missing} slice(s) missing) between {ordered[i].name} at {dist[i]:.3f} mm and "
            f"{ordered[i + 1].name} at {dist[i + 1]:.3f} mm along the slice normal"
        )
    if (steps.max() - steps.min()) > UNEVEN_REL_TOL * median:
        warnings.append(
            f"uneven slice spacing in {label}: steps between {steps.min():.3f} and {steps.max():.3f} mm "
            f"(median {median:.3f}); the volume uses the mean step"
        )
    return float((dist[-1] - dist[0]) / (len(dist) - 1))


def _slice_axis(
    ordered: list[_Slice], positions: np.ndarray, dist: np.ndarray, normal: np.ndarray, step: float, label: str,
    warnings: list[str],
) -> np.ndarray:
    """The step from one slice's origin to the next (LPS mm): ``normal * step``, or leaning with a gantry tilt.

    Tilted gantries stack slices whose origins drift sideways in proportion to their distance along the
    normal: the grid is sheared, exactly described by an affine whose slice axis is the mean step between
    origins. Origins that drift but not along one straight line cannot be one grid and are refused.
    """
    if len(ordered) < 2:
        return normal * step
    rel = positions - positions[0]
    sideways = rel - np.outer(rel @ normal, normal)
    extent = dist[-1] - dist[0]
    drift = np.linalg.norm(sideways, axis=1)
    angle = float(np.degrees(np.arctan2(drift.max(), extent)))
    if angle <= STRAIGHT_DEG:
        return normal * step
    off_line = np.linalg.norm(sideways - np.outer((dist - dist[0]) / extent, sideways[-1]), axis=1)
    pixel = float(min(_floats(ordered[0].header.PixelSpacing)))
    if off_line.max() > LINE_TOL * pixel:
        raise CTReadError(
            f"slice origins of {label} drift sideways but not along one line (up to {off_line.max():.2f} mm off it, "
            f"e.g. {ordered[int(np.argmax(off_line))].name}): not one stack of slices"
        )
    tag = ordered[0].header.get("GantryDetectorTilt")
    tag_txt = f", GantryDetectorTilt {tag}" if tag is not None else ""
    if angle > MAX_TILT_DEG:
        raise CTReadError(
            f"slice origins of {label} lean {angle:.2f} degrees from the slice normal (up to {drift.max():.2f} mm "
            f"sideways, e.g. {ordered[int(np.argmax(drift))].name}{tag_txt}): more than a gantry tilts "
            f"({MAX_TILT_DEG:g} degrees)"
        )
    warnings.append(
        f"gantry tilt of {angle:.2f} degrees in {label}{tag_txt}: the volume keeps the slices' sheared grid, so "
        "the masks lie on the source slices (the DICOM-SEG in any viewer; a NIfTI holds the shear in its sform "
        "only, which ITK-based tools cannot represent); the model sees the scan resampled to an orthogonal grid"
    )
    return (positions[-1] - positions[0]) / (len(ordered) - 1)


def _read_pixels(ordered: list[_Slice], label: str) -> np.ndarray:
    """Decode each file once (any transfer syntax pydicom+pylibjpeg decode) and apply each slice's rescale.

    Compressed series of many files are decoded in worker processes (:mod:`models.io.dicom_pixels`). The
    frames of an enhanced image come from its one decoded array, each with its own frame's rescale.
    """
    h0 = ordered[0].header
    vol = np.empty((int(h0.Columns), int(h0.Rows), len(ordered)), dtype=np.float32)
    members: dict[str, list[int]] = defaultdict(list)  # file -> where its slices or frames go in the volume
    for k, s in enumerate(ordered):
        members[s.path].append(k)
    files = [ordered[ks[0]] for ks in members.values()]
    syntax = getattr(getattr(h0, "file_meta", None), "TransferSyntaxUID", None)
    compressed = bool(syntax is not None and syntax.is_compressed)
    n_frames = max(s.frame or 0 for s in ordered) + 1
    source = files[0].opener() if len(files) == 1 and files[0].frame is not None else None
    frame_workers = decode_workers(n_frames, compressed)
    if isinstance(source, str) and frame_workers > 1:  # an enhanced image: its frames shared out
        stream = decode_multiframe(source, n_frames, frame_workers)
    else:
        stream = decode_series([f.opener for f in files], decode_workers(len(files), compressed))
    with contextlib.closing(stream) as decoded:
        for first in files:
            try:
                pixels, slope, intercept = next(decoded)
            except NoPixelData as exc:
                raise CTReadError(f"no pixel data in DICOM file {first.path} ({label})") from exc
            except Exception as exc:
                ts = getattr(getattr(first.header, "file_meta", None), "TransferSyntaxUID", None)
                ts_txt = f" (transfer syntax {ts.name if ts is not None else 'unknown'})"
                raise CTReadError(
                    f"cannot decode pixel data of DICOM file {first.path}{ts_txt} in {label}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            for k in members[first.path]:
                s = ordered[k]
                plane, a, b = pixels, slope, intercept
                if s.frame is not None:  # the header's rescale is the frame's own (functional groups)
                    frames = pixels if pixels.ndim == 3 else pixels[None]
                    if s.frame >= len(frames):
                        raise CTReadError(f"DICOM file {s.path} holds {len(frames)} frames, its header describes "
                                          f"more ({label})")
                    plane = frames[s.frame]
                    a = float(s.header.get("RescaleSlope", 1.0) or 1.0)
                    b = float(s.header.get("RescaleIntercept", 0.0) or 0.0)
                if plane.shape != (int(h0.Rows), int(h0.Columns)):
                    raise CTReadError(f"unexpected pixel array shape {plane.shape} in DICOM file {s.name} ({label})")
                vol[:, :, k] = (plane.astype(np.float64) * a + b).T
    return vol


def _first_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _series_meta(ordered: list[_Slice], groups: dict[str, list[_Slice]], chosen: str, origin: str) -> dict[str, Any]:
    h = ordered[0].header
    series = [_series_summary(u, s) for u, s in groups.items()]
    return {
        "format": "dicom",
        "path": origin,
        "files": [s.path for s in ordered],
        "study_uid": str(h.get("StudyInstanceUID", "") or ""),
        "series_uid": chosen,
        "frame_of_reference_uid": str(h.get("FrameOfReferenceUID", "") or ""),
        "sop_instance_uids": [s.sop_uid for s in ordered],
        "modality": str(h.get("Modality", "") or ""),
        "series_description": str(h.get("SeriesDescription", "") or ""),
        "transfer_syntax": str(getattr(getattr(h, "file_meta", None), "TransferSyntaxUID", "") or ""),
        "window_center": _first_float(h.get("WindowCenter")),
        "window_width": _first_float(h.get("WindowWidth")),
        "series": series,
        "other_series": [s for s in series if s["uid"] != chosen],
        **({"frames": [None if s.frame is None else s.frame + 1 for s in ordered]}
           if any(s.frame is not None for s in ordered) else {}),
    }
