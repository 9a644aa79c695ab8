"""Freed blocks stay in the process: a second block of the same size maps no new pages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD = """
import resource, sys
import numpy as np
from models.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MB: above glibc's largest dynamic mmap threshold
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.ones(64 * 2**20, dtype=np.uint8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_of_second_block(mode: str) -> int:
    env = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": "0"}  # 4 kB pages: one fault per page, whatever the kernel
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_is_reused_without_new_page_faults() -> None:
    assert _faults_of_second_block("default") > 10_000  # 16,384 pages mapped afresh: the test can tell
    assert _faults_of_second_block("keep") < 1_000


def test_the_command_line_keeps_freed_memory(monkeypatch) -> None:
    import models.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    monkeypatch.setattr(cli, "app", lambda: None)
    monkeypatch.setattr(cli.os, "_exit", lambda code: calls.append(code))
    monkeypatch.setattr(cli.atexit, "_run_exitfuncs", lambda: None)
    monkeypatch.setattr(cli.threading, "active_count", lambda: 1)
    cli.main()
    assert calls == [True, 0]
