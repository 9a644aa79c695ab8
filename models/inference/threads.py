"""Worker threads that share the CPU with torch's own threads instead of fighting them.

Why: torch's intra-op thread count is a per-thread setting (OpenMP), so a plain thread pool running torch
operators starts a full team of threads in every worker, and two workers on two cores run four threads
that wait on each other. Here each worker gets ``threads // workers`` intra-op threads, and the caller's
count (which torch also applies process-wide, e.g. to MKL) is restored when the pool closes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch


@contextlib.contextmanager
def torch_thread_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of ``workers`` threads, each with an equal share of the caller's intra-op threads."""
    threads = torch.get_num_threads()
    per_worker = max(1, threads // max(1, workers))
    torch.set_num_threads(per_worker)
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(per_worker,)) as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)
