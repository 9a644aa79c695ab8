"""Read the next scans on a background thread while the current one is being worked on.

Why: reading a CT is mostly waiting for I/O and decompression (ISA-L's inflate of a 512 x 512 x 300
``.nii.gz`` runs outside the GIL), while ``asa segment`` spends 2 s importing torch and MONAI and loading
the model before it needs the first scan, then seconds in the network per scan. Started first, the read
of the first scan overlaps the model's loading, and each later scan's read overlaps the previous scan's
network pass (the ``asa segment a b c`` batch case). Results come back in input order; a scan that cannot
be read raises its own error at its turn and does not stop the others.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

S = TypeVar("S")
T = TypeVar("T")


@dataclass(frozen=True)
class Read(Generic[S, T]):
    """One source's read, done or in progress: :meth:`result` waits for it (and re-raises its error)."""

    source: S
    future: Future[tuple[T, float]]

    def result(self) -> tuple[T, float, float]:
        """(the value, seconds the read itself took, seconds this call waited for it)."""
        t0 = time.perf_counter()
        value, seconds = self.future.result()
        return value, seconds, time.perf_counter() - t0


def _timed(read: Callable[[S], T], source: S) -> tuple[T, float]:
    t0 = time.perf_counter()
    value = read(source)
    return value, time.perf_counter() - t0


class ReadAhead(Generic[S, T]):
    """Iterate over ``sources`` as :class:`Read` s, in order, while up to ``ahead`` later ones are being read.

    Reading starts at construction (the point: the first scan is read while the caller loads its model),
    on one thread, in order. While the caller works on the read it took last, the next ``ahead`` sources
    are read, so ``ahead`` bounds the memory: at most ``1 + ahead`` scans besides the ones the caller
    keeps. Use it in a ``with`` block: leaving it (a ``break``, an exception) cancels the reads not yet
    started and waits for the one running.
    """

    def __init__(self, sources: Iterable[S], read: Callable[[S], T], ahead: int = 1) -> None:
        if ahead < 0:
            raise ValueError(f"ahead must be >= 0, got {ahead}")
        self._todo = iter(sources)
        self._read = read
        self._ahead = ahead
        self._pending: deque[Read[S, T]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead")
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < 1 + self._ahead:
            try:
                source = next(self._todo)
            except StopIteration:
                return
            self._pending.append(Read(source, self._pool.submit(_timed, self._read, source)))

    def __iter__(self) -> Iterator[Read[S, T]]:
        return self

    def __next__(self) -> Read[S, T]:
        self._fill()
        if not self._pending:
            raise StopIteration
        return self._pending.popleft()

    def close(self) -> None:
        """Cancel the reads not started yet and wait for the running one (its result is dropped)."""
        for left in self._pending:
            left.future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ReadAhead[S, T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
