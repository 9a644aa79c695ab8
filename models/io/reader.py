"""The one CT reader of the product: every format becomes the same canonical HU volume.

Everything downstream (training, inference, ``asa info``) sees a :class:`CTImage` whose array is
float32 Hounsfield units in closest-canonical RAS+ voxel order (nibabel's ``as_closest_canonical``
semantics: axes are permuted/flipped, never resampled). Because results must go back to the
clinician in the *input's* own grid (same voxel order as the DICOM slices or the NIfTI file), the
image also carries a :class:`SourceSpace` that undoes the reorientation exactly
(:meth:`CTImage.to_source`).

Formats: NIfTI (.nii, .nii.gz), DICOM series (folder, .zip, list of files; see
:mod:`models.io.dicom`), NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from isal import igzip, igzip_threaded
from nibabel.orientations import (
    aff2axcodes,
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)
from numpy.lib.stride_tricks import as_strided

__all__ = ["CTImage", "CTReadError", "SourceSpace", "load_ct", "load_label", "save_nifti"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_RAS_ORNT = axcodes2ornt(("R", "A", "S"))


class CTReadError(ValueError):
    """A scan could not be read as a CT volume; the message names the problem and the file/series."""


@dataclass(frozen=True)
class SourceSpace:
    """How the canonical array maps back to the input's own voxel grid.

    ``ornt`` is nibabel's orientation of the *source* axes relative to RAS (``io_orientation`` of
    ``affine``): canonical = source permuted/flipped by ``ornt``; :meth:`to_source` inverts it.
    For DICOM the source axes are (column, row, slice) with slices in ``slice_order`` (the
    SOPInstanceUIDs sorted along the slice normal), so ``source[:, :, k].T`` is slice k's pixels.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    ornt: np.ndarray
    axcodes: str
    slice_order: tuple[str, ...] = ()

    @property
    def to_canonical_transform(self) -> np.ndarray:
        """nibabel orientation transform source -> canonical (RAS)."""
        return ornt_transform(self.ornt, _RAS_ORNT)

    @property
    def to_source_transform(self) -> np.ndarray:
        """nibabel orientation transform canonical (RAS) -> source."""
        return ornt_transform(_RAS_ORNT, self.ornt)


@dataclass
class CTImage:
    """A CT volume in HU, canonical RAS voxel order, plus the way back to the source grid."""

    array: np.ndarray
    affine: np.ndarray
    source: SourceSpace
    meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (i, j, k) of ``array``."""
        return _spacing(self.affine)

    @property
    def orientation(self) -> str:
        """Axis codes of ``array`` (``"RAS"`` after canonicalisation)."""
        return "".join(aff2axcodes(self.affine))

    def to_source(self, volume: np.ndarray, copy: bool = True) -> np.ndarray:
        """Map an array on ``array``'s grid (label map, probabilities...) to the input's voxel order.

        Only the first three axes are spatial; trailing axes (e.g. channels-last) are kept. The
        result, written with ``source.affine``, overlays the original file voxel for voxel.
        ``copy=False`` returns a view (flipped and transposed strides) of ``volume``: for a result that
        owns ``volume`` anyway, it saves copying a whole map (78 MB for 512 x 512 x 300 labels).
        """
        vol = np.asarray(volume)
        if vol.shape[:3] != self.array.shape:
            raise ValueError(
                f"to_source: volume shape {vol.shape[:3]} is not the canonical grid {self.array.shape}"
            )
        view = apply_orientation(vol, self.source.to_source_transform)
        return np.array(view, order="K", copy=True) if copy else view


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Column norms of the 3x3 part: the mm step per voxel along each array axis."""
    norms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def canonicalise(
    array: np.ndarray,
    affine: np.ndarray,
    meta: dict[str, Any],
    warnings: list[str] | None = None,
    slice_order: Sequence[str] = (),
) -> CTImage:
    """Wrap a source-grid HU array into a :class:`CTImage` (closest-canonical RAS voxel order).

    Shared by every format so the orientation logic exists exactly once.
    """
    if array.ndim != 3:
        raise CTReadError(f"expected a 3D volume, got shape {array.shape} in {meta.get('path')}")
    source, canon_affine = _source_space(array.shape, affine, meta, slice_order)
    # order="K": keep the source's memory layout (NIfTI data is Fortran-ordered). Forcing C order here
    # transposes the whole volume in memory, 3 s for a 512 x 512 x 300 scan; every consumer takes any strides.
    canon = np.array(apply_orientation(array, source.to_canonical_transform), dtype=np.float32, order="K", copy=True)
    return CTImage(array=canon, affine=canon_affine, source=source, meta=meta, warnings=list(warnings or []))


def _source_space(
    shape: tuple[int, ...], affine: np.ndarray, meta: dict[str, Any], slice_order: Sequence[str] = ()
) -> tuple[SourceSpace, np.ndarray]:
    """The source grid of a ``shape`` volume with ``affine``, and the affine of its canonical (RAS) array."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CTReadError(f"invalid (singular or non-finite) affine in {meta.get('path')}:\n{affine}")
    ornt = io_orientation(affine)
    source = SourceSpace(
        shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
        affine=affine,
        ornt=ornt,
        axcodes="".join(aff2axcodes(affine)),
        slice_order=tuple(slice_order),
    )
    return source, affine @ inv_ornt_aff(source.to_canonical_transform, shape)


def _canonical_buffer(source: SourceSpace) -> tuple[np.ndarray, np.ndarray]:
    """An empty float32 canonical array laid out as :func:`canonicalise` lays out a Fortran-ordered source
    (positive strides), and the view of it in the source's voxel order, which a reader fills slab by slab."""
    itemsize = np.dtype(np.float32).itemsize
    x, y, _ = source.shape
    layout = as_strided(np.empty(1, np.float32), source.shape, strides=(itemsize, itemsize * x, itemsize * x * y))
    canon = np.empty_like(apply_orientation(layout, source.to_canonical_transform), order="K")
    return canon, apply_orientation(canon, source.to_source_transform)


def fill_non_finite(ct: CTImage) -> None:
    """Set NaN and infinite voxels to the scan's lowest finite value, in place, and say so in ``ct.warnings``.

    Why: some converters mark the space outside the field of view with NaN. One NaN inside a sliding
    window makes the network's whole output for that window NaN, the blending spreads it, and the argmax
    of NaN reads background: the scan would get an empty mask and no error. The lowest value is what the
    scan itself uses outside the body (air or padding). Only float files can hold such values, so the
    readers call this for those alone; a scan with no finite voxel at all is refused.
    """
    bad = ~np.isfinite(ct.array)
    count = int(np.count_nonzero(bad))
    if count == 0:
        return
    if count == bad.size:
        raise CTReadError(f"{ct.meta.get('path')}: every voxel is NaN or infinite")
    low = float(np.min(ct.array, where=~bad, initial=np.inf))
    ct.array[bad] = low
    ct.warnings.append(f"{count} voxel(s) ({100 * count / bad.size:.3g} %) are NaN or infinite: set to {low:g} HU, "
                       "the scan's lowest value")


LOWEST_BODY_HU = -100.0
"""Fat; air and lung lie far below. A CT of a body has voxels below this."""


def hu_warning(array: np.ndarray) -> str | None:
    """A warning when ``array`` does not look like a CT in Hounsfield units, else None.

    Why: a scan whose rescale intercept was lost in a conversion (stored values, air at 0 or +24 instead
    of -1000), or an MR image given by mistake, reads without error and gives a mask that is quietly
    wrong. Every CT of a body holds air or fat, so no voxel below -100 HU means the values are something
    else. Every 4th voxel on each axis is enough to find air, and costs milliseconds.
    """
    low = float(np.min(array[::4, ::4, ::4]))
    if low < LOWEST_BODY_HU:
        return None
    return (f"no voxel below {LOWEST_BODY_HU:g} HU (lowest {low:g}): the values may not be Hounsfield units (air "
            "is -1000): a lost rescale intercept (-1024), or not a CT? The masks are likely wrong")


# --------------------------------------------------------------------------- dispatch


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suf in (*NIFTI_SUFFIXES, *ITK_SUFFIXES, ".zip"):
        if name.endswith(suf):
            return suf
    return path.suffix.lower()


def load_ct(src: str | Path | Sequence[str | Path], series_uid: str | None = None) -> CTImage:
    """Read a CT scan from any supported input into a canonical HU :class:`CTImage`.

    ``src`` is a NIfTI/NRRD/MetaImage file, a DICOM folder (searched recursively), a ``.zip`` of
    DICOM files, a single DICOM file (its folder is *not* scanned) or a list of DICOM files.
    ``series_uid`` picks one DICOM series when several are present.
    Raises :class:`CTReadError` with the file/series named for every unreadable input.
    """
    from models.io import dicom  # local import: dicom imports this module

    if not isinstance(src, str | Path):
        files = [Path(p) for p in src]
        if not files:
            raise CTReadError("load_ct: empty list of files")
        return dicom.load_dicom_files(files, series_uid=series_uid)
    path = Path(src)
    if not path.exists():
        raise CTReadError(f"no such file or folder: {path}")
    if path.is_dir():
        return dicom.load_dicom_folder(path, series_uid=series_uid)
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return _load_nifti(path)
    if suffix in ITK_SUFFIXES:
        return _load_itk(path)
    if suffix == ".zip" or zipfile.is_zipfile(path):
        return dicom.load_dicom_zip(path, series_uid=series_uid)
    return dicom.load_dicom_files([path], series_uid=series_uid)


# --------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path) -> tuple[nib.Nifti1Image | nib.Nifti2Image, np.ndarray]:
    """The image (header, affine, scaling) and its stored voxel values; failures become a CTReadError.

    ``.nii.gz`` is decompressed by ISA-L (:mod:`isal.igzip`, twice as fast as zlib) and streamed, never held
    as a whole file; ``.nii`` is memory-mapped by nibabel. The values are the stored ones, unscaled: callers
    apply ``scl_slope``/``scl_inter`` (:func:`_scaling`) after their own copy.
    """
    try:
        if not path.name.lower().endswith(".gz"):
            img = nib.load(str(path))
            return img, np.asarray(img.dataobj.get_unscaled())  # type: ignore[return-value]
        with igzip.open(path, "rb") as stream:
            head = stream.read(540)
            stream.seek(0)
            klass = nib.Nifti2Image if nib.Nifti2Header.may_contain_header(head) else nib.Nifti1Image
            img = klass.from_stream(stream)
            return img, np.asarray(img.dataobj.get_unscaled())
    except Exception as exc:  # nibabel and the decompressor raise many types for corrupt files
        raise CTReadError(f"cannot read NIfTI file {path}: {exc}") from exc


def _scaling(img: nib.Nifti1Image | nib.Nifti2Image) -> tuple[float, float]:
    """nibabel's (slope, intercept) of the stored values: (1, 0) when the header leaves them unset."""
    return float(img.dataobj.slope), float(img.dataobj.inter)


def _header_scaling(header: nib.Nifti1Header | nib.Nifti2Header) -> tuple[float, float]:
    """The same from a header alone (nibabel: a slope of 0 or NaN means 'not scaled', the intercept too)."""
    slope, inter = header.get_slope_inter()
    return (1.0 if slope is None else float(slope)), (0.0 if inter is None else float(inter))


def _spatial_shape(shape: Sequence[int], path: Path) -> tuple[int, int, int]:
    """Accept trailing singleton dimensions (4D with one volume), refuse real 4D/2D data."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) != 3:
        raise CTReadError(f"{path}: expected a 3D volume, got shape {tuple(shape)}")
    return (int(dims[0]), int(dims[1]), int(dims[2]))


def _squeeze_to_3d(data: np.ndarray, path: Path) -> np.ndarray:
    """``data`` without its trailing singleton dimensions (a view), see :func:`_spatial_shape`."""
    _spatial_shape(data.shape, path)
    return data[(...,) + (0,) * (data.ndim - 3)]


def _load_nifti(path: Path) -> CTImage:
    """NIfTI: stored values, reoriented and cast to float32 in one copy, then ``scl_slope``/``scl_inter``.

    Why not ``get_fdata``: it makes a scaled float copy that reorienting copies again. Reading the stored
    int16 (:func:`_read_nifti`) and making one cast-and-flip copy takes 0.65 s against 1.37 s for a
    512 x 512 x 300 ``.nii.gz`` (``bench/cpu_stages.py``). A ``.nii.gz`` is cast slab by slab as it is
    decompressed (:func:`_stream_nifti_gz`), so the stored values are never held whole either.
    """
    if path.name.lower().endswith(".gz"):
        header, ct = _stream_nifti_gz(path)
        slope, inter = _header_scaling(header)
        dtype = header.get_data_dtype()
    else:
        img, stored = _read_nifti(path)
        header = img.header
        slope, inter = _scaling(img)
        dtype = img.get_data_dtype()
        ct = canonicalise(_squeeze_to_3d(stored, path), img.affine, {"path": str(path)})  # float32, scaled below
    ct.meta = {
        "format": "nifti",
        "path": str(path),
        "dtype": str(dtype),
        "scl_slope": _finite_or_none(slope),
        "scl_inter": _finite_or_none(inter),
        "nifti_forms": nifti_forms(header),
    }
    warning = nifti_forms_warning(ct.meta["nifti_forms"], source_shape=ct.source.shape)
    if warning:
        ct.warnings.append(f"{path.name}: {warning}")
    if slope != 1.0:
        ct.array *= np.float32(slope)
    if inter != 0.0:
        ct.array += np.float32(inter)
    if dtype.kind == "f":
        fill_non_finite(ct)
    return ct


def nifti_forms(header: nib.Nifti1Header | nib.Nifti2Header) -> dict[str, Any]:
    """The header's qform and sform with their codes (JSON-able), so outputs can carry them unchanged.

    Why: viewers disagree on a NIfTI without a coded orientation (both codes 0: nibabel assumes LAS, ITK
    LPS) and on one whose qform and sform differ (nibabel takes the sform, others the qform). A mask
    written with the scan's own forms and codes is placed exactly like the scan by every viewer.
    """
    return {
        "qform": header.get_qform().tolist(),
        "qform_code": int(header["qform_code"]),
        "sform": header.get_sform().tolist(),
        "sform_code": int(header["sform_code"]),
    }


def nifti_forms_warning(forms: dict[str, Any], source_shape: Sequence[int]) -> str | None:
    """A warning when the orientation of a NIfTI is missing or ambiguous (see :func:`nifti_forms`), else None."""
    if forms["qform_code"] == 0 and forms["sform_code"] == 0:
        return (
            "no orientation in the header (qform_code and sform_code are 0): read as LAS with the spacing from "
            "pixdim, as nibabel does (ITK-based tools assume LPS). The masks carry the same header, so they overlay "
            "the scan in any viewer; but if the scan is not stored LAS the model sees it mirrored, and left and "
            "right organs may be swapped"
        )
    if forms["qform_code"] > 0 and forms["sform_code"] > 0:
        corners = np.array([[i, j, k, 1.0] for i in (0, source_shape[0] - 1) for j in (0, source_shape[1] - 1)
                            for k in (0, source_shape[2] - 1)])
        qform, sform = np.asarray(forms["qform"]), np.asarray(forms["sform"])
        apart = float(np.max(np.linalg.norm((corners @ (qform - sform).T)[:, :3], axis=1)))
        if apart > 0.5 * min(_spacing(sform)):
            return (
                f"the qform and the sform disagree (the scan's corners lie up to {apart:.1f} mm apart): read "
                "with the sform, as nibabel does; tools that read the qform place the scan elsewhere. The masks "
                "carry both forms unchanged, so they overlay the scan in any viewer"
            )
    return None


def apply_nifti_forms(header: nib.Nifti1Header | nib.Nifti2Header, forms: dict[str, Any]) -> None:
    """Give ``header`` the qform, sform and codes :func:`nifti_forms` read from a scan (pixdim follows)."""
    header.set_qform(np.asarray(forms["qform"], dtype=np.float64), code=int(forms["qform_code"]))
    header.set_sform(np.asarray(forms["sform"], dtype=np.float64), code=int(forms["sform_code"]))


STREAM_SLAB_BYTES = 8 * 2**20
"""Stored bytes decompressed per step by :func:`_stream_nifti_gz` (whole slices, at least one)."""


def _stream_nifti_gz(path: Path) -> tuple[nib.Nifti1Header | nib.Nifti2Header, CTImage]:
    """Decompress a ``.nii.gz`` (ISA-L) slab by slab straight into the canonical float32 array.

    Why: the stored values held whole are a second copy of the scan (157 MB for 512 x 512 x 300 int16),
    and on a VM the first touch of fresh pages costs more than the cast itself. Measured on that scan in
    fresh processes (2-core test VM, medians of 7): 1.26 s against 1.40 s, peak RSS 762 against 899 MB.
    The data is decompressed in a background thread (:mod:`isal.igzip_threaded`, outside the GIL) while
    this thread casts the previous slab, so reading costs about the longer of the two, not their sum.
    NIfTI data is Fortran-ordered, so a run of whole slices is contiguous and lands in the canonical
    array through its source-order view (:func:`_canonical_buffer`).
    The array is unscaled; the caller applies ``scl_slope``/``scl_inter``.
    """
    try:
        with igzip.open(path, "rb") as stream:  # seekable, for the header; the threaded reader is not
            head = stream.read(540)
            stream.seek(0)
            klass = nib.Nifti2Header if nib.Nifti2Header.may_contain_header(head) else nib.Nifti1Header
            header = klass.from_fileobj(stream)
        shape = _spatial_shape(header.get_data_shape(), path)
        dtype = header.get_data_dtype()
        if dtype.kind not in "biuf":
            raise CTReadError(f"{path}: unsupported NIfTI data type {dtype} (a CT holds real numbers)")
        source, canon_affine = _source_space(shape, header.get_best_affine(), {"path": str(path)})
        canon, src_view = _canonical_buffer(source)
        x, y, z = source.shape
        slice_bytes = x * y * dtype.itemsize
        per = max(1, STREAM_SLAB_BYTES // slice_bytes)
        buf = bytearray(max(min(per, z) * slice_bytes, int(header.get_data_offset())))
        with igzip_threaded.open(path, "rb", threads=1) as stream:
            _read_exactly(stream, memoryview(buf)[: int(header.get_data_offset())], path)  # skip the header
            for z0 in range(0, z, per):
                n = min(per, z - z0)
                _read_exactly(stream, memoryview(buf)[: n * slice_bytes], path)
                src_view[:, :, z0 : z0 + n] = np.frombuffer(buf, dtype, count=n * x * y).reshape((x, y, n), order="F")
    except CTReadError:
        raise
    except Exception as exc:  # nibabel and the decompressor raise many types for corrupt files
        raise CTReadError(f"cannot read NIfTI file {path}: {exc}") from exc
    return header, CTImage(array=canon, affine=canon_affine, source=source, meta={"path": str(path)})


def _read_exactly(stream: Any, view: memoryview, path: Path) -> None:
    """Fill ``view`` from ``stream``; a file that ends first is truncated."""
    filled = 0
    while filled < len(view):
        got = stream.readinto(view[filled:])
        if not got:
            raise CTReadError(f"cannot read NIfTI file {path}: the data ends early (truncated file?)")
        filled += got


def _finite_or_none(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


# --------------------------------------------------------------------------- NRRD / MetaImage


def itk_to_ras_affine(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """ITK geometry (LPS world, row-major 3x3 direction) -> 4x4 voxel(i, j, k) -> RAS affine."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) @ np.diag(np.asarray(spacing, float))
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    return LPS_TO_RAS @ lps


def _load_itk(path: Path) -> CTImage:
    """NRRD/MetaImage through SimpleITK, whose geometry is always LPS (it converts RAS-space NRRD)."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except Exception as exc:  # SimpleITK raises RuntimeError with a long ITK message
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CTReadError(f"cannot read image file {path}: {first}") from exc
    if img.GetDimension() != 3:
        raise CTReadError(f"{path}: expected a 3D image, got {img.GetDimension()}D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise CTReadError(f"{path}: expected a scalar image, got {img.GetNumberOfComponentsPerPixel()} components")
    data = sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32)  # ITK array is [k, j, i]
    affine = itk_to_ras_affine(img.GetDirection(), img.GetSpacing(), img.GetOrigin())
    fmt = "nrrd" if _suffix(path) in (".nrrd", ".nhdr") else "metaimage"
    meta = {"format": fmt, "path": str(path), "dtype": img.GetPixelIDTypeAsString()}
    ct = canonicalise(data, affine, meta)
    if "float" in meta["dtype"]:
        fill_non_finite(ct)
    return ct


# --------------------------------------------------------------------------- labels and writing


def _grids_match(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> bool:
    """Same voxel centres: directions within 1e-4 (relative), origins within 1% of a voxel."""
    tol = 0.01 * float(min(spacing))
    return bool(
        np.allclose(a[:3, :3], b[:3, :3], atol=1e-4 * float(max(spacing)), rtol=0)
        and np.allclose(a[:3, 3], b[:3, 3], atol=max(tol, 1e-4), rtol=0)
    )


def load_label(path: str | Path, like: CTImage, names: Mapping[int, str] | None = None) -> np.ndarray:
    """Read a label map defined on the scan's grid, in ``like.array``'s voxel order.

    NIfTI, NRRD and MetaImage labels may be stored in any axis order/flip of that grid (e.g. LAS from
    dcm2niix for an LPS DICOM): they are canonicalised the same way and must then have exactly the scan's
    canonical shape and affine, else :class:`CTReadError` (we never resample a label silently). A DICOM-SEG
    is placed frame by frame and its segments become the ids of ``names`` (label id -> name) whose names
    they carry (:mod:`models.io.seg_label`); an RTSTRUCT's contours are filled on the slices they lie on, its
    ROIs matched to ``names`` the same way (:mod:`models.io.rtstruct_label`).
    """
    path = Path(path)
    if not path.exists():
        raise CTReadError(f"no such label file: {path}")
    from models.io.rtstruct_label import load_rtstruct_label
    from models.io.seg_label import dicom_modality, load_seg_label

    modality = dicom_modality(path)
    if modality == "SEG":
        return load_seg_label(path, like, names)
    if modality == "RTSTRUCT":
        return load_rtstruct_label(path, like, names)
    if modality is not None:
        raise CTReadError(
            f"label {path} is a DICOM {modality} image, not a segmentation (DICOM-SEG, RTSTRUCT) or label map"
        )
    suffix = _suffix(path)
    if suffix in ITK_SUFFIXES:
        lab_img = _load_itk(path)
        data, affine, src_shape = lab_img.array, lab_img.affine, lab_img.source.shape
    else:
        img, stored = _read_nifti(path)
        slope, inter = _scaling(img)
        raw = _squeeze_to_3d(stored if (slope, inter) == (1.0, 0.0) else stored * slope + inter, path)
        transform = ornt_transform(io_orientation(img.affine), _RAS_ORNT)
        data = np.ascontiguousarray(apply_orientation(raw, transform))
        affine = img.affine @ inv_ornt_aff(transform, raw.shape)
        src_shape = raw.shape
    if data.shape != like.array.shape or not _grids_match(affine, like.affine, like.spacing):
        raise CTReadError(
            f"label {path} is not on the grid of the scan {like.meta.get('path', '')}: label shape "
            f"{tuple(src_shape)} (canonical {data.shape}), scan shape {like.source.shape} (canonical "
            f"{like.array.shape}); label affine (canonical)\n{np.round(affine, 4)}\nscan affine\n"
            f"{np.round(like.affine, 4)}"
        )
    if np.issubdtype(data.dtype, np.floating) and np.all(np.mod(data, 1) == 0):
        data = data.astype(np.int32 if data.size and np.abs(data).max() > 32767 else np.int16)
    return data


def save_nifti(
    array: np.ndarray, affine: np.ndarray, path: str | Path, dtype: Any = None, forms: dict[str, Any] | None = None
) -> None:
    """Write ``array`` with ``affine`` (sform and qform) to ``path``; creates parent folders.

    ``forms`` (a NIfTI scan's :func:`nifti_forms`) replaces both with the scan's own forms and codes, so a map
    on the scan's grid is placed like the scan by every viewer.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(arr.dtype)
    img.set_sform(np.asarray(affine, dtype=np.float64), code=1)
    img.set_qform(np.asarray(affine, dtype=np.float64), code=1)
    if forms is not None:
        apply_nifti_forms(img.header, forms)
    nib.save(img, str(path))
