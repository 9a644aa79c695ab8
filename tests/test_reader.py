"""Reader formats and the sacred orientation round-trips (NIfTI, NRRD, MetaImage), labels, writing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from models.io.reader import CTImage, CTReadError, load_ct, load_label, save_nifti

SHAPE = (7, 9, 11)
MARK_IDX = (2, 6, 8)
MARK_HU = 3000.0


def _rot(axis: int, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    m = np.eye(3)
    a, b = [i for i in range(3) if i != axis]
    m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
    return m


def _affine(directions: np.ndarray, spacing: tuple[float, float, float], origin: tuple[float, float, float]):
    aff = np.eye(4)
    aff[:3, :3] = directions @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


ORIENTATIONS = {  # columns: world (RAS) direction of voxel axes i, j, k
    "RAS": np.eye(3),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    "PSR": np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, 1.0, 0]]),
    "oblique": _rot(2, 25) @ _rot(0, -10) @ np.array([[0, 0, -1.0], [0, 1.0, 0], [1.0, 0, 0]]),
}


def _volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.integers(-1000, 1000, size=SHAPE).astype(np.int16)
    vol[MARK_IDX] = int(MARK_HU)
    return vol


def _assert_roundtrip(ct: CTImage, src: np.ndarray, src_affine: np.ndarray) -> None:
    """The marker keeps its world position; to_source restores the file's array exactly."""
    world = src_affine @ np.r_[MARK_IDX, 1.0]
    idx = np.unravel_index(int(np.argmax(ct.array)), ct.array.shape)
    assert ct.array[idx] == MARK_HU
    np.testing.assert_allclose(ct.affine @ np.r_[idx, 1.0], world, atol=1e-3)
    np.testing.assert_array_equal(ct.to_source(ct.array), src.astype(np.float32))
    np.testing.assert_allclose(ct.source.affine, src_affine, atol=1e-4)
    assert ct.orientation == "RAS"  # closest canonical, also for the oblique grids
    assert ct.source.shape == src.shape


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_nifti_orientations_marker_and_roundtrip(tmp_path: Path, name: str) -> None:
    vol = _volume()
    aff = _affine(ORIENTATIONS[name], (0.9, 1.3, 2.5), (10.0, -20.0, 33.0))
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(vol, aff), str(path))
    ct = load_ct(path)
    _assert_roundtrip(ct, vol, aff)
    canon = nib.as_closest_canonical(nib.load(str(path)))
    np.testing.assert_allclose(ct.affine, canon.affine, atol=1e-5)
    np.testing.assert_array_equal(ct.array, canon.get_fdata(dtype=np.float32))
    assert ct.orientation == "RAS"
    assert ct.source.axcodes == "".join(nib.aff2axcodes(aff))
    assert sorted(ct.spacing) == pytest.approx(sorted((0.9, 1.3, 2.5)), abs=1e-4)
    if name in ("RAS", "LPS"):  # axes only flipped: the Fortran layout of NIfTI data survives, no transposing copy
        assert ct.array.flags.f_contiguous
        assert ct.to_source(ct.array).flags.f_contiguous


def test_nifti_int32_scl_slope_inter(tmp_path: Path) -> None:
    raw = np.arange(np.prod(SHAPE), dtype=np.int32).reshape(SHAPE)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_data_dtype(np.int32)
    img.header.set_slope_inter(2.0, -1024.0)
    path = tmp_path / "scaled.nii"
    nib.save(img, str(path))
    ct = load_ct(path)
    np.testing.assert_allclose(ct.array, raw * 2.0 - 1024.0)
    assert ct.meta["format"] == "nifti" and ct.meta["dtype"] == "int32"
    assert ct.array.dtype == np.float32


def test_nifti_4d_singleton_squeezed_and_real_4d_refused(tmp_path: Path) -> None:
    vol = _volume()
    nib.save(nib.Nifti1Image(vol[..., None], np.eye(4)), str(tmp_path / "one.nii.gz"))
    assert load_ct(tmp_path / "one.nii.gz").array.shape == SHAPE
    nib.save(nib.Nifti1Image(np.stack([vol, vol], -1), np.eye(4)), str(tmp_path / "two.nii.gz"))
    with pytest.raises(CTReadError, match=r"two\.nii\.gz: expected a 3D volume"):
        load_ct(tmp_path / "two.nii.gz")


def test_corrupt_nifti_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(CTReadError, match=r"bad\.nii\.gz"):
        load_ct(bad)


def test_truncated_nifti_gz_names_file(tmp_path: Path) -> None:
    """A download cut short: the header is readable, the voxel data ends early."""
    full = tmp_path / "full.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).integers(-1000, 1000, (64, 64, 40), dtype=np.int16),
                             np.eye(4)), str(full))  # fmt: skip
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CTReadError, match=r"cut\.nii\.gz"):
        load_ct(cut)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(("slope", "inter"), [(np.nan, np.nan), (0.0, 5.0), (2.0, -1024.0), (0.5, 0.0)])
def test_nifti_scaling_as_nibabel_defines_it(tmp_path: Path, suffix: str, slope: float, inter: float) -> None:
    """Stored values times scl_slope plus scl_inter; a slope of 0 or NaN means 'not scaled' (NIfTI standard)."""
    img = nib.Nifti1Image(np.arange(-12, 12, dtype=np.int16).reshape(2, 3, 4), np.diag([-1.0, 2.0, 3.0, 1.0]))
    img.header["scl_slope"], img.header["scl_inter"] = slope, inter
    nib.save(img, str(tmp_path / f"s{suffix}"))
    expected = nib.load(str(tmp_path / f"s{suffix}")).get_fdata(dtype=np.float32)[::-1]  # L -> R
    np.testing.assert_array_equal(load_ct(tmp_path / f"s{suffix}").array, expected)


@pytest.mark.parametrize("name", ["LPS", "oblique"])
@pytest.mark.parametrize("dtype", ["<i2", ">i2", "<f4", "u1"])
def test_nifti_gz_read_in_slabs_equals_nibabel(tmp_path: Path, monkeypatch, name: str, dtype: str) -> None:
    """A .nii.gz is cast into the canonical array slab by slab: slabs of 3 slices, the last one shorter."""
    from models.io import reader

    vol = _volume().astype(dtype)
    aff = _affine(ORIENTATIONS[name], (0.9, 1.3, 2.5), (10.0, -20.0, 33.0))
    header = nib.Nifti1Header(endianness=">" if dtype.startswith(">") else "<")  # a big-endian file stays one
    header.set_data_dtype(np.dtype(dtype))
    img = nib.Nifti1Image(vol, aff, header)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    x, y, z = vol.shape
    assert z % 3
    monkeypatch.setattr(reader, "STREAM_SLAB_BYTES", 3 * x * y * np.dtype(dtype).itemsize)
    ct = load_ct(tmp_path / "s.nii.gz")
    canon = nib.as_closest_canonical(nib.load(str(tmp_path / "s.nii.gz")))
    np.testing.assert_array_equal(ct.array, canon.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(ct.affine, canon.affine, atol=1e-5)
    assert ct.meta["dtype"] == str(np.dtype(dtype)) and all(s > 0 for s in ct.array.strides)


def test_nifti_gz_with_header_extension_over_several_blocks(tmp_path: Path, monkeypatch) -> None:
    """The data starts at ``vox_offset`` (past any header extension), and slabs that straddle the threaded
    decompressor's 1 MiB blocks are filled whole: a 3.4 MB volume in slabs of 7 slices."""
    from models.io import reader

    vol = np.random.default_rng(1).integers(-1024, 3000, (211, 197, 41), dtype=np.int16)
    img = nib.Nifti1Image(vol, np.diag([-0.8, -0.8, 2.0, 1.0]))
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"site-specific notes " * 20))
    nib.save(img, str(tmp_path / "ext.nii.gz"))
    assert nib.load(str(tmp_path / "ext.nii.gz")).dataobj.offset > 352
    monkeypatch.setattr(reader, "STREAM_SLAB_BYTES", 7 * 211 * 197 * 2)
    canon = nib.as_closest_canonical(nib.load(str(tmp_path / "ext.nii.gz")))
    np.testing.assert_array_equal(load_ct(tmp_path / "ext.nii.gz").array, canon.get_fdata(dtype=np.float32))


def test_nifti2_gz(tmp_path: Path) -> None:
    vol = _volume()
    nib.save(nib.Nifti2Image(vol, np.eye(4)), str(tmp_path / "two.nii.gz"))
    np.testing.assert_array_equal(load_ct(tmp_path / "two.nii.gz").array, vol)


@pytest.mark.parametrize("space", ["right-anterior-superior", "left-posterior-superior"])
@pytest.mark.parametrize("name", ["LPS", "oblique"])
def test_nrrd_roundtrip(tmp_path: Path, space: str, name: str) -> None:
    vol = _volume(1)
    ras = _affine(ORIENTATIONS[name], (0.7, 1.1, 3.0), (-5.0, 8.0, 100.0))
    flip = np.diag([-1.0, -1.0, 1.0]) if space.startswith("left") else np.eye(3)
    header = {"space": space, "space directions": (flip @ ras[:3, :3]).T, "space origin": flip @ ras[:3, 3],
              "kinds": ["domain"] * 3}
    path = tmp_path / "vol.nrrd"
    nrrd.write(str(path), vol, header)
    ct = load_ct(path)
    assert ct.meta["format"] == "nrrd"
    _assert_roundtrip(ct, vol, ras)


def test_nhdr_detached_header(tmp_path: Path) -> None:
    vol = _volume(2)
    ras = _affine(ORIENTATIONS["PSR"], (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    header = {"space": "right-anterior-superior", "space directions": ras[:3, :3].T, "space origin": ras[:3, 3]}
    nrrd.write(str(tmp_path / "vol.nhdr"), vol, header, detached_header=True)
    _assert_roundtrip(load_ct(tmp_path / "vol.nhdr"), vol, ras)


@pytest.mark.parametrize("suffix", [".mha", ".mhd"])
@pytest.mark.parametrize("name", ["RAS", "PSR", "oblique"])
def test_metaimage_roundtrip(tmp_path: Path, suffix: str, name: str) -> None:
    vol = _volume(3)
    ras = _affine(ORIENTATIONS[name], (0.6, 0.9, 1.7), (12.0, -40.0, 7.0))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(0))
    img = sitk.GetImageFromArray(vol.transpose(2, 1, 0))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    img.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    path = tmp_path / f"vol{suffix}"
    sitk.WriteImage(img, str(path))
    ct = load_ct(path)
    assert ct.meta["format"] == "metaimage"
    _assert_roundtrip(ct, vol, ras)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_non_finite_voxels_get_the_lowest_value_and_a_warning(tmp_path: Path, suffix: str) -> None:
    """NaN or inf voxels would make the network's output NaN and the mask empty, silently (reader.fill_non_finite)."""
    vol = _volume().astype(np.float32)
    vol[0, :4, :] = np.nan
    vol[MARK_IDX] = np.inf
    vol[1, 1, 1] = -np.inf
    path = tmp_path / f"vol{suffix}"
    if suffix == ".mha":
        sitk.WriteImage(sitk.GetImageFromArray(vol.transpose(2, 1, 0)), str(path))
    elif suffix == ".nrrd":
        nrrd.write(str(path), vol, {"space": "right-anterior-superior", "space directions": np.eye(3)})
    else:
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    ct = load_ct(path)
    finite = vol[np.isfinite(vol)]
    expected = np.where(np.isfinite(vol), vol, finite.min())
    np.testing.assert_array_equal(ct.array, expected[::-1, ::-1] if suffix == ".mha" else expected)
    bad = 4 * SHAPE[2] + 2
    assert ct.warnings == [f"{bad} voxel(s) ({100 * bad / vol.size:.3g} %) are NaN or infinite: set to "
                           f"{finite.min():g} HU, the scan's lowest value"]


def test_a_scan_with_no_finite_voxel_is_refused(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.full(SHAPE, np.nan, np.float32), np.eye(4)), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(CTReadError, match=r"nan\.nii\.gz: every voxel is NaN or infinite"):
        load_ct(tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(_volume(), np.eye(4)), str(tmp_path / "int.nii.gz"))
    assert load_ct(tmp_path / "int.nii.gz").warnings == []  # integers are always finite: no check, no warning


def test_itk_unreadable_and_2d(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mha"
    bad.write_text("nonsense")
    with pytest.raises(CTReadError, match=r"bad\.mha"):
        load_ct(bad)
    sitk.WriteImage(sitk.Image(4, 5, sitk.sitkInt16), str(tmp_path / "flat.mha"))
    with pytest.raises(CTReadError, match="3D"):
        load_ct(tmp_path / "flat.mha")


def test_load_label_same_grid_any_storage_order(tmp_path: Path) -> None:
    vol = _volume()
    aff = _affine(ORIENTATIONS["LPS"], (0.9, 1.3, 2.5), (10.0, -20.0, 33.0))
    nib.save(nib.Nifti1Image(vol, aff), str(tmp_path / "ct.nii.gz"))
    ct = load_ct(tmp_path / "ct.nii.gz")
    lab = (vol == MARK_HU).astype(np.uint8) * 5
    nib.save(nib.Nifti1Image(lab, aff), str(tmp_path / "lab.nii.gz"))
    got = load_label(tmp_path / "lab.nii.gz", like=ct)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got == 5, ct.array == MARK_HU)
    np.testing.assert_array_equal(ct.to_source(got), lab)
    # the same label stored in another axis order of the same grid (as dcm2niix does) still lines up
    img = nib.Nifti1Image(lab, aff)
    flipped = img.as_reoriented(np.array([[1, 1], [0, -1], [2, 1]]))
    nib.save(flipped, str(tmp_path / "lab_flipped.nii.gz"))
    np.testing.assert_array_equal(load_label(tmp_path / "lab_flipped.nii.gz", like=ct), got)


def test_load_label_mismatch_is_an_error(tmp_path: Path) -> None:
    vol = _volume()
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(vol, aff), str(tmp_path / "ct.nii.gz"))
    ct = load_ct(tmp_path / "ct.nii.gz")
    shifted = aff.copy()
    shifted[0, 3] += 0.5
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), shifted), str(tmp_path / "shifted.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((7, 9, 10), np.uint8), aff), str(tmp_path / "short.nii.gz"))
    for name in ("shifted", "short"):
        with pytest.raises(CTReadError, match=f"label .*{name}.nii.gz is not on the grid"):
            load_label(tmp_path / f"{name}.nii.gz", like=ct)


def test_save_nifti_roundtrip_and_to_source_shape_check(tmp_path: Path) -> None:
    vol = _volume()
    aff = _affine(ORIENTATIONS["PSR"], (1.0, 2.0, 3.0), (1.0, 2.0, 3.0))
    save_nifti(vol, aff, tmp_path / "sub" / "v.nii.gz")
    ct = load_ct(tmp_path / "sub" / "v.nii.gz")
    save_nifti(ct.to_source(ct.array > 0), ct.source.affine, tmp_path / "mask.nii.gz")
    img = nib.load(str(tmp_path / "mask.nii.gz"))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), (vol > 0).astype(np.uint8))
    with pytest.raises(ValueError, match="not the canonical grid"):
        ct.to_source(np.zeros((2, 2, 2)))


def _nifti_with_forms(path: Path, qform: np.ndarray | None, qcode: int, sform: np.ndarray | None, scode: int) -> Path:
    img = nib.Nifti1Image(_volume(), None)
    img.header.set_zooms((0.8, 0.9, 2.5))
    img.header.set_qform(qform, code=qcode)
    img.header.set_sform(sform, code=scode)
    nib.save(img, str(path))
    return path


def test_nifti_without_orientation_is_read_as_nibabel_reads_it_with_a_warning(tmp_path: Path) -> None:
    """Both codes 0: viewers disagree (nibabel LAS, ITK LPS); the user must hear that the model may see it mirrored."""
    path = _nifti_with_forms(tmp_path / "bare.nii.gz", None, 0, None, 0)
    ct = load_ct(path)
    assert ct.source.axcodes == "LAS"
    np.testing.assert_allclose(ct.source.affine, nib.load(str(path)).affine)
    assert len(ct.warnings) == 1 and ct.warnings[0].startswith("bare.nii.gz: no orientation in the header")
    assert ct.meta["nifti_forms"]["qform_code"] == 0 and ct.meta["nifti_forms"]["sform_code"] == 0


def test_nifti_whose_qform_and_sform_disagree_is_read_with_the_sform_and_a_warning(tmp_path: Path) -> None:
    sform = _affine(ORIENTATIONS["RAS"], (0.8, 0.9, 2.5), (0.0, 0.0, 0.0))
    qform = _affine(ORIENTATIONS["LPS"], (0.8, 0.9, 2.5), (10.0, 0.0, 0.0))
    ct = load_ct(_nifti_with_forms(tmp_path / "two.nii", qform, 1, sform, 1))
    np.testing.assert_allclose(ct.source.affine, sform, atol=1e-5)
    assert len(ct.warnings) == 1 and "the qform and the sform disagree" in ct.warnings[0]
    # the same forms, as a float32 header stores them: no warning
    assert load_ct(_nifti_with_forms(tmp_path / "same.nii", sform, 1, sform, 1)).warnings == []
    assert load_ct(_nifti_with_forms(tmp_path / "qonly.nii", qform, 1, None, 0)).warnings == []


@pytest.mark.parametrize("codes", [(0, 0), (1, 1), (1, 0), (0, 2)])
def test_save_nifti_with_the_scans_forms_is_placed_as_the_scan_by_itk_and_nibabel(tmp_path: Path, codes) -> None:
    """A map written with ``forms`` has the scan's geometry in ITK as in nibabel, whatever header the scan has."""
    sform = _affine(ORIENTATIONS["oblique"], (0.8, 0.9, 2.5), (5.0, -3.0, 40.0))
    qform = _affine(ORIENTATIONS["LPS"], (0.8, 0.9, 2.5), (10.0, 0.0, 0.0))
    scan = _nifti_with_forms(tmp_path / "scan.nii.gz", qform, codes[0], sform, codes[1])
    ct = load_ct(scan)
    save_nifti(ct.to_source(ct.array > 0), ct.source.affine, tmp_path / "map.nii.gz", forms=ct.meta["nifti_forms"])
    a, b = sitk.ReadImage(str(scan)), sitk.ReadImage(str(tmp_path / "map.nii.gz"))
    for get in ("GetOrigin", "GetDirection", "GetSpacing"):
        np.testing.assert_allclose(getattr(b, get)(), getattr(a, get)(), atol=1e-4)
    np.testing.assert_allclose(nib.load(str(tmp_path / "map.nii.gz")).affine, nib.load(str(scan)).affine, atol=1e-4)
