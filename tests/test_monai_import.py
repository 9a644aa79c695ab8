"""``import_monai`` and ``asa segment``: MONAI loads without matplotlib and scipy.signal, which stay importable.

Each check runs in a fresh interpreter: in the test process MONAI is long imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from segment_helpers import swin_model_dir, write_nifti

REPO = Path(__file__).resolve().parents[1]
HIDDEN = ("matplotlib", "matplotlib.pyplot", "scipy.signal", "scipy.stats")


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_monai_loads_without_the_hidden_modules_which_stay_importable() -> None:
    code = (
        "import sys\n"
        "from models.monai_import import import_monai\n"
        "import_monai()\n"
        "from monai.networks.nets import SwinUNETR\n"
        "from monai.inferers import SlidingWindowInferer\n"
        f"print(sorted(m for m in {HIDDEN!r} if m in sys.modules))  # loaded, or a marker left behind\n"
        "import matplotlib.pyplot, scipy.signal\n"
        "print(scipy.signal.hilbert([1.0, 0.0]).shape, matplotlib.pyplot.figure is not None)\n"
    )
    assert _python(code).splitlines() == ["[]", "(2,) True"]


def test_nothing_changes_where_monai_is_already_imported() -> None:
    code = (
        "import sys, monai\n"
        "from models.monai_import import import_monai\n"
        "import_monai()\n"
        "print('matplotlib.pyplot' in sys.modules, 'scipy.signal' in sys.modules)\n"
    )
    assert _python(code) == "True True"


def test_segment_never_imports_them(tmp_path: Path) -> None:
    """End to end: ``asa segment`` in its own process, its imports listed by ``-X importtime``.

    A hidden module shows up there too, as a lookup of a few microseconds that found ``None``; one that
    really loaded takes milliseconds, so only such lines count.
    """
    model = swin_model_dir(tmp_path / "model", names=("liver",), roi=64, spacing=(5.4, 5.4, 6.0))
    scan = write_nifti(tmp_path / "ct.nii.gz", np.full((20, 20, 12), -500, np.int16), np.diag([5.4, 5.4, 6.0, 1]))
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "models.cli", "segment", str(scan), "--model", str(model), "--out",
               str(tmp_path / "out"), "--no-preview"]  # fmt: skip
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = {}
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit():
                loaded[name.strip()] = int(cumulative)
    assert "monai" in loaded and "torch" in loaded  # the listing is real
    assert (tmp_path / "out" / "segmentation.nii.gz").exists()
    really = {m: us for m, us in loaded.items() if m in HIDDEN and us > 200}
    assert not really, f"loaded although MONAI does not need them here: {really}"


@pytest.mark.parametrize("name", HIDDEN[:3])
def test_the_hidden_list_names_real_modules(name: str) -> None:
    """A renamed module would make hiding it a silent no-op: each must exist in this environment."""
    import importlib.util

    assert importlib.util.find_spec(name) is not None
