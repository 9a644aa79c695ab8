"""Import MONAI without the plotting and signal-processing libraries it loads for features ASA-CT never calls.

Why: ``import monai`` imports every MONAI submodule (``load_submodules`` in ``monai/__init__.py``), and two
of them load heavy optional libraries at import time through ``optional_import``: ``matplotlib.pyplot``
(``monai.utils.jupyter_utils``) and ``scipy.signal``, which brings ``scipy.stats`` with it
(``monai.data.ultrasound_confidence_map``). Measured on 2 cores: ``import monai.networks.nets,
monai.inferers`` 3.6-4.3 s with them, 2.7-2.9 s without; ``asa segment`` on the real sample is about 8 s
in all, so a process that segments one scan spends a seventh of its life loading a plotting library.

With these modules hidden while MONAI loads, MONAI's ``optional_import`` records them as missing; only its
notebook plots, learning-rate-finder plots, ``matshow3d``, the ultrasound confidence map and the notch
filter transform would then raise ``OptionalImportError``, and ASA-CT calls none of them. The libraries
stay importable: they are hidden for the duration of MONAI's import only, and ASA-CT's own plots import
matplotlib later as usual. Where MONAI is already imported, nothing changes.
"""

from __future__ import annotations

import sys

HIDDEN_WHILE_IMPORTING = ("matplotlib", "matplotlib.pyplot", "scipy.signal")


def import_monai() -> None:
    """Import MONAI with :data:`HIDDEN_WHILE_IMPORTING` hidden (those already imported are left alone).

    Call it from the main thread before anything else imports MONAI, and while no other thread imports
    the hidden modules (they would fail with ``ImportError`` meanwhile): ``asa segment`` calls it first,
    while its read-ahead thread reads the scan (nibabel, pydicom; neither imports them).
    """
    if "monai" in sys.modules:
        return
    hidden = [name for name in HIDDEN_WHILE_IMPORTING if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "known missing" marker
    try:
        import monai  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]
