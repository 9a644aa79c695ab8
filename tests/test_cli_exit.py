"""The ``asa`` console script ends with ``os._exit`` (models/cli.py ``main``): output and status survive it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from models.cli import exit_code

REPO = Path(__file__).resolve().parents[1]


def _asa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "models.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_output_is_complete_and_status_zero(tmp_path: Path) -> None:
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 9, 10), -1000, dtype=np.int16), np.diag([0.7, 0.7, 2.0, 1.0])), str(path))
    res = _asa("info", str(path))
    assert res.returncode == 0, res.stderr
    assert "8 x 9 x 10" in res.stdout  # buffered stdout reached the pipe before os._exit


def test_errors_keep_their_status_and_message(tmp_path: Path) -> None:
    res = _asa("info", str(tmp_path / "missing.nii.gz"))
    assert res.returncode == 2
    assert "missing.nii.gz" in res.stderr
    assert _asa("no-such-command").returncode == 2  # typer's usage error, unchanged


@pytest.mark.parametrize(("code", "want"), [(None, 0), (0, 0), (3, 3), ("fatal", 1)])
def test_exit_code_is_what_python_would_use(code: object, want: int, capsys: pytest.CaptureFixture) -> None:
    assert exit_code(SystemExit(code)) == want
    assert ("fatal" in capsys.readouterr().err) == (code == "fatal")  # a message is printed, as Python does


def test_main_flushes_buffered_output_and_runs_atexit_handlers(tmp_path: Path) -> None:
    marker = tmp_path / "atexit-ran"
    child = (
        "import atexit, pathlib\n"
        "from models import cli\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).touch)\n"  # e.g. a TemporaryDirectory's cleanup
        "def app():\n"
        "    print('buffered line')\n"  # block-buffered on a pipe: must be flushed before os._exit
        "    raise SystemExit(4)\n"
        "cli.app = app\n"
        "cli.main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as usual
    res = subprocess.run([sys.executable, "-c", child], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 4
    assert res.stdout == "buffered line\n"
    assert marker.exists()
