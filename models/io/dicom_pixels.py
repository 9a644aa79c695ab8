"""Decode the pixels of a DICOM series' slices, in worker processes when they are compressed and many.

The frames of one multi-frame (enhanced) file are shared out the same way, a chunk of frames per task: each
worker reads only its frames' part of the pixel data.

Why processes: pylibjpeg's JPEG 2000 decoder holds the GIL, about 22 ms per 512 x 512 slice (AMD EPYC),
so threads do not help and a 300-slice series takes 7 s on one core. Worker processes decode slices in
parallel. They are started with ``spawn`` (forking a process that runs torch threads, or ``asa segment``'s
read-ahead thread, can deadlock) and import only this module, pydicom and numpy.

When not: uncompressed slices (reading them is cheap), short series (starting a worker costs ~0.3 s),
one CPU, and daemonic processes, which may not have children: a Celery prefork worker, for example.
There, and if the pool cannot start at all, slices are decoded here, one after the other.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.pixels import iter_pixels

POOL_MIN_SLICES = 48  # below this, starting the workers costs more than they save
POOL_MAX_WORKERS = 8
FRAMES_PER_TASK = 16  # frames of one multi-frame file decoded per task


class NoPixelData(ValueError):
    """The file is a DICOM header without an image."""


Payload = str | bytes  # a file path, or the file's bytes (a zip member); both pickle for a worker


def decode_slice(payload: Payload) -> tuple[np.ndarray, float, float]:
    """One DICOM file -> (its stored pixel array (rows, columns), RescaleSlope, RescaleIntercept)."""
    ds = pydicom.dcmread(io.BytesIO(payload) if isinstance(payload, bytes) else payload)
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise NoPixelData("no pixel data")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return ds.pixel_array, slope, intercept


def payload_of(opener: Callable[[], BinaryIO | str]) -> Payload:
    """What a worker needs to open a file: its path, or the bytes of an in-memory one."""
    source = opener()
    return source if isinstance(source, str) else source.read()


def decode_workers(n_slices: int, compressed: bool) -> int:
    """How many worker processes to decode ``n_slices`` with (1: decode here)."""
    if not compressed or n_slices < POOL_MIN_SLICES or multiprocessing.current_process().daemon:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, POOL_MAX_WORKERS, n_slices // (POOL_MIN_SLICES // 2)))


def decode_frames(path: str, start: int, stop: int) -> np.ndarray:
    """Frames ``start`` to ``stop - 1`` of a multi-frame file, (frames, rows, columns)."""
    return np.stack(list(iter_pixels(path, indices=range(start, stop))))


def _mapped(function: Callable, tasks: Sequence[tuple], workers: int) -> Iterator:
    """``function(*task)`` of every task, in order; on ``workers`` processes when more than one.

    A task's error is raised at its turn, with its own type. A pool that cannot start (``AssertionError`` in
    a daemonic process, ``OSError`` when out of processes) falls back to running the tasks here. A worker
    that dies is not retried here (a decoder that crashes on a file would take this process down with it):
    the ``BrokenProcessPool`` raised says what usually kills one.
    """
    if workers > 1:
        pool: ProcessPoolExecutor | None = None
        try:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            results = pool.map(function, *zip(*tasks, strict=True))
        except (AssertionError, OSError):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        else:
            try:
                yield from results
            except BrokenProcessPool as exc:
                raise BrokenProcessPool(
                    "a decoding worker process died: out of memory, a decoder crash on this file, or a Python "
                    "script without an `if __name__ == '__main__':` guard (its workers re-run it as they start)"
                ) from exc
            finally:  # also when the caller stops early: drop the tasks not run yet
                pool.shutdown(wait=True, cancel_futures=True)
            return
    for task in tasks:
        yield function(*task)


def decode_series(
    openers: Sequence[Callable[[], BinaryIO | str]], workers: int
) -> Iterator[tuple[np.ndarray, float, float]]:
    """:func:`decode_slice` of every file, in order; on ``workers`` processes when more than one.

    One slice per task: a chunk's error would surface at the chunk's first slice, naming the wrong file.
    """
    yield from _mapped(decode_slice, [(payload_of(o),) for o in openers], workers)


def decode_multiframe(path: str, n_frames: int, workers: int) -> Iterator[tuple[np.ndarray, float, float]]:
    """:func:`decode_series`' answer for one multi-frame file: frames 0 to ``n_frames - 1``, decoded in chunks
    of :data:`FRAMES_PER_TASK` on ``workers`` processes. The frames' rescale is in their functional groups,
    so slope and intercept are 1 and 0 here."""
    chunks = [(path, s, min(s + FRAMES_PER_TASK, n_frames)) for s in range(0, n_frames, FRAMES_PER_TASK)]
    yield np.concatenate(list(_mapped(decode_frames, chunks, workers))), 1.0, 0.0
