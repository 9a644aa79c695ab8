"""The one way every benchmark reports: JSON on stdout and, with ``--out``, the same JSON in a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit_json(result: Any, out: Path | None, indent: int = 2) -> None:
    text = json.dumps(result, indent=indent)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
