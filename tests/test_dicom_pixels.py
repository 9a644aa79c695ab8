"""Compressed DICOM series decoded in worker processes: same volume, errors named, daemonic fallback."""

from __future__ import annotations

import multiprocessing
import os
import zipfile
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import build_dicom_series, write_enhanced_ct
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless

from models.io import dicom_pixels
from models.io.dicom import load_dicom_files, load_dicom_folder, load_dicom_zip
from models.io.dicom_pixels import POOL_MIN_SLICES, decode_series, decode_workers
from models.io.reader import CTReadError

N = POOL_MIN_SLICES + 4  # just long enough for the pool
two_cpus = pytest.mark.skipif(decode_workers(N, compressed=True) < 2, reason="one CPU: the pool is never used")


@pytest.fixture(scope="module")
def j2k_series(tmp_path_factory: pytest.TempPathFactory):
    return build_dicom_series(tmp_path_factory.mktemp("j2k") / "ct", n=N, rows=40, cols=36,
                              transfer_syntax=JPEG2000Lossless, slopes=[1.0] * (N - 1) + [2.0])


def test_workers_only_for_long_compressed_series() -> None:
    assert decode_workers(10_000, compressed=False) == 1
    assert decode_workers(POOL_MIN_SLICES - 1, compressed=True) == 1
    assert decode_workers(10_000, compressed=True) <= dicom_pixels.POOL_MAX_WORKERS


@two_cpus
def test_the_pool_decodes_what_one_process_decodes(j2k_series) -> None:
    openers = [(lambda p=p: str(p)) for p in sorted(j2k_series.folder.iterdir())]
    serial = list(decode_series(openers, workers=1))
    pooled = decode_series(openers, workers=2)
    first = next(pooled)
    assert multiprocessing.active_children(), "no worker process: the pool was not used"
    rest = list(pooled)
    for (a, slope_a, inter_a), (b, slope_b, inter_b) in zip(serial, [first, *rest], strict=True):
        np.testing.assert_array_equal(a, b)
        assert (slope_a, inter_a) == (slope_b, inter_b)
    assert not multiprocessing.active_children()  # shut down once read


@two_cpus
def test_a_long_j2k_series_reads_as_written(j2k_series, tmp_path: Path) -> None:
    ct = load_dicom_folder(j2k_series.folder)
    np.testing.assert_array_equal(ct.to_source(ct.array), j2k_series.hu)
    zipped = tmp_path / "ct.zip"
    with zipfile.ZipFile(zipped, "w") as zf:  # zip members reach the workers as bytes
        for f in j2k_series.files:
            zf.write(f, f"a/{f.name}")
    np.testing.assert_array_equal(load_dicom_zip(zipped).array, ct.array)


@two_cpus
def test_a_broken_slice_is_named_and_the_pool_stops(tmp_path: Path) -> None:
    series = build_dicom_series(tmp_path / "ct", n=N, rows=40, cols=36, transfer_syntax=RLELossless,
                                shuffle_names=False)
    broken = series.files[N // 2]
    ds = pydicom.dcmread(broken)
    ds.PixelData = encapsulate([b"\x01\x00\x00\x00" + bytes(60) + b"not RLE"])  # a frame that does not decode
    ds.save_as(broken)
    with pytest.raises(CTReadError, match=rf"cannot decode pixel data of DICOM file .*{broken.name}.*RLE Lossless"):
        load_dicom_folder(series.folder)
    assert not multiprocessing.active_children()


def _load_in_child(folder: str, out: str) -> None:
    np.save(out, load_dicom_folder(Path(folder)).array)


def test_a_daemonic_process_decodes_in_process(j2k_series, tmp_path: Path) -> None:
    """Celery's prefork workers are daemonic and may not start processes: the series is still read."""
    out = tmp_path / "vol.npy"
    child = multiprocessing.get_context("spawn").Process(target=_load_in_child, daemon=True,
                                                         args=(str(j2k_series.folder), str(out)))
    child.start()
    child.join(120)
    assert child.exitcode == 0
    np.testing.assert_array_equal(np.load(out), load_dicom_folder(j2k_series.folder).array)


def _enhanced_rle(series, path: Path, broken_frame: int | None = None) -> Path:
    """The series as one RLE-compressed enhanced image, frames shuffled; optionally one frame undecodable."""
    from pydicom.encaps import generate_frames

    datasets = []
    for f in series.files:
        ds = pydicom.dcmread(f)
        ds.decompress()
        datasets.append(ds)
    order = np.random.default_rng(1).permutation(len(datasets)).tolist()
    image = write_enhanced_ct(datasets, path, frame_order=order)
    image.compress(RLELossless)
    if broken_frame is not None:
        frames = list(generate_frames(image.PixelData, number_of_frames=int(image.NumberOfFrames)))
        frames[broken_frame] = b"\x01\x00\x00\x00" + bytes(60) + b"not RLE"
        image.PixelData = encapsulate(frames)
    image.save_as(path)
    return path


@two_cpus
def test_an_enhanced_image_shares_its_frames_out(j2k_series, tmp_path: Path, monkeypatch) -> None:
    """One multi-frame file of N frames, per-frame rescale: decoded in chunks on the pool, the classic volume."""
    import models.io.dicom as dicom

    path = _enhanced_rle(j2k_series, tmp_path / "enhanced.dcm")
    calls = []

    def spy(source: str, n_frames: int, workers: int):
        calls.append((n_frames, workers))
        return dicom_pixels.decode_multiframe(source, n_frames, workers)

    monkeypatch.setattr(dicom, "decode_multiframe", spy)
    pooled = dicom.load_dicom_files([path])
    assert calls == [(N, 2)]
    np.testing.assert_array_equal(pooled.array, load_dicom_folder(j2k_series.folder).array)
    monkeypatch.setattr(dicom_pixels, "POOL_MIN_SLICES", 10**9)  # the in-process route, for comparison
    np.testing.assert_array_equal(dicom.load_dicom_files([path]).array, pooled.array)
    assert len(calls) == 1


@two_cpus
def test_a_broken_frame_of_an_enhanced_image_is_named(j2k_series, tmp_path: Path) -> None:
    path = _enhanced_rle(j2k_series, tmp_path / "enhanced.dcm", broken_frame=N - 3)
    with pytest.raises(CTReadError, match=r"cannot decode pixel data of DICOM file .*enhanced.dcm.*RLE Lossless"):
        load_dicom_files([path])
    assert not multiprocessing.active_children()


def _die_in_a_worker(x: int) -> int:
    if multiprocessing.parent_process() is not None:  # a worker: die as an out-of-memory kill would
        os._exit(9)
    return x


@two_cpus
def test_a_dead_worker_is_reported_with_what_usually_kills_one() -> None:
    with pytest.raises(BrokenProcessPool, match=r"worker process died: out of memory, a decoder crash.*__main__"):
        list(dicom_pixels._mapped(_die_in_a_worker, [(i,) for i in range(4)], workers=2))
    assert not multiprocessing.active_children()
