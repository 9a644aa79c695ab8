"""The one way every benchmark reports: JSON on stdout and, with ``--out``, the same JSON in a file.

Every report carries the machine it was measured on (:func:`machine`): figures from different CPUs do
not compare, and whether the CPU has native bf16 decides whether ``--bf16`` is fast or emulated.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """CPU model, family, core count and the bf16-relevant instruction sets, from ``/proc/cpuinfo``.

    The family tells CPU generations apart where a virtual machine reports only "AMD EPYC" (25: Zen 3
    and 4, 26: Zen 5).
    """
    name, family, flags = platform.processor() or platform.machine(), None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "cpu family":
                family = int(value)
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # pragma: no cover - not Linux
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return {"cpu": name, "cpu_family": family, "cores": os.cpu_count(), "isa": [f for f in wanted if f in flags]}


def emit_json(result: Any, out: Path | None, indent: int = 2) -> None:
    if isinstance(result, dict) and "machine" not in result:
        result = {"machine": machine(), **result}
    text = json.dumps(result, indent=indent)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
