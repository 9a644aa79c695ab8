"""``ReadAhead``: order, errors per source, how far it reads ahead, closing early; the CLI imports no torch."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from models.io.read_ahead import ReadAhead

REPO = Path(__file__).resolve().parents[1]
WAIT = 5.0  # seconds a background read gets to show up before a test gives up on it


class Recorder:
    """A read function that records which sources it started, and can hold chosen sources at a gate."""

    def __init__(self, hold: set[int] = frozenset()) -> None:
        self.started: list[int] = []
        self.seen: defaultdict[int, threading.Event] = defaultdict(threading.Event)
        self.gate = threading.Event()
        self.hold = hold

    def __call__(self, source: int) -> int:
        self.started.append(source)
        self.seen[source].set()
        if source in self.hold:
            self.gate.wait(WAIT)
        if source < 0:
            raise ValueError(f"unreadable source {source}")
        return source * 10


def test_results_come_in_order_with_their_timings() -> None:
    with ReadAhead([3, 1, 2], Recorder()) as reads:
        got = [(r.source, r.result()) for r in reads]
    assert [(s, value) for s, (value, _, _) in got] == [(3, 30), (1, 10), (2, 20)]
    for _, (_, read_s, waited_s) in got:
        assert read_s >= 0 and waited_s >= 0


def test_a_failed_read_raises_at_its_turn_and_the_others_still_come() -> None:
    outcomes = []
    with ReadAhead([1, -1, 2], Recorder()) as reads:
        for read in reads:
            try:
                outcomes.append(read.result()[0])
            except ValueError as exc:
                outcomes.append(str(exc))
    assert outcomes == [10, "unreadable source -1", 20]


def test_reading_starts_at_construction_before_the_first_next() -> None:
    rec = Recorder()
    with ReadAhead([7], rec):
        assert rec.seen[7].wait(WAIT)


@pytest.mark.parametrize("ahead", [0, 1, 2])
def test_reads_at_most_ahead_sources_beyond_the_current_one(ahead: int) -> None:
    rec = Recorder()
    with ReadAhead(range(6), rec, ahead=ahead) as reads:
        first = next(reads)
        assert first.result()[0] == 0
        assert rec.seen[ahead].wait(WAIT)  # the last source it may read while the caller holds source 0
        time.sleep(0.2)  # room for a wrong implementation to start one more
        assert rec.started == list(range(ahead + 1))
        second = next(reads)  # taking the next one makes room for one more
        assert second.source == 1 and rec.seen[ahead + 1].wait(WAIT)
        time.sleep(0.2)
        assert rec.started == list(range(ahead + 2))


def test_leaving_early_cancels_the_reads_not_started() -> None:
    rec = Recorder(hold={0})
    reads = ReadAhead(range(5), rec, ahead=2)  # 0 running (held at the gate), 1 and 2 queued
    assert rec.seen[0].wait(WAIT)
    closer = threading.Thread(target=reads.close)
    closer.start()
    time.sleep(0.2)
    assert closer.is_alive()  # close waits for the running read...
    rec.gate.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert rec.started == [0]  # ...and the queued ones never start


def test_negative_ahead_is_refused() -> None:
    with pytest.raises(ValueError, match="ahead must be >= 0"):
        ReadAhead([1], Recorder(), ahead=-1)


def test_the_command_line_imports_no_torch() -> None:
    """``asa --help`` stays fast, and ``asa segment`` can read its first scan while torch loads."""
    code = "import sys, models.cli; print(sorted(m for m in ('torch', 'monai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_inference_package_still_exports_its_names() -> None:
    import models.inference as inference
    from models.inference.segmenter import Segmenter

    assert inference.Segmenter is Segmenter and callable(inference.write_outputs)
    with pytest.raises(AttributeError, match="no attribute 'Segmentor'"):
        _ = inference.Segmentor
