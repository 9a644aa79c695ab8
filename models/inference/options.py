"""What one segmentation run may change, independent of the model: a pydantic model the REST API can reuse.

Defaults follow the Swin UNETR evaluation protocol (sliding window, overlap 0.5, gaussian blending); the
fast path (scaled-dot-product attention with the window bias cached, fp32,
:mod:`models.inference.window_attention`) is on because its masks agree with plain fp32
(``tests/test_segment_fastpath.py`` checks Dice >= 0.99). bf16 autocast is opt-in: it makes the network
~1.5x faster on a CPU with AMX, but on the trained real-sample model its masks agree with fp32 at mean Dice
0.989 (real sample) and 0.981 (512 x 512 x 300 CT), below the 0.99 bar (``bench/inference.py``,
docs/results.md).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from models.data.labels import normalise_organ_name
from models.modeldir import FAST_SPACING_FACTOR, ModelSpec


class SegmentOptions(BaseModel):
    """Per-run settings. Every field has a safe default, so ``SegmentOptions()`` is the standard run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    overlap: float = Field(0.5, ge=0.0, lt=1.0, description="sliding-window overlap between neighbouring windows")
    fast: bool = Field(False, description=f"resample to {FAST_SPACING_FACTOR:g}x the model's spacing (coarser)")
    organs: tuple[str, ...] | None = Field(
        None, description="only these labels (names or ids) in the outputs; the network runs only near them"
    )
    tta: bool = Field(False, description="test-time mirroring: identity + a flip on each of the 3 axes, averaged")
    fast_path: bool = Field(True, description="SDPA attention, bias cached (MONAI's default attention if off)")
    bf16: bool = Field(False, description="bf16 autocast on top (faster on recent CPUs and GPUs, less exact)")
    sw_batch_size: int | None = Field(None, ge=1, description="windows per network pass; None: from free memory")
    crop_margin_mm: float = Field(20.0, ge=0.0, description="margin around the organs' region (mm)")


def resolve_organs(spec: ModelSpec, organs: tuple[str, ...] | list[str] | None) -> list[int]:
    """Label ids for ``organs`` (names or numeric ids); all organs when None.

    Raises ``ValueError`` naming every unknown organ and listing the model's, so a typo fails before
    any scan is read.
    """
    names = spec.organ_names
    if organs is None:
        return sorted(names)
    by_name = {normalise_organ_name(n): i for i, n in names.items()}
    ids: list[int] = []
    unknown: list[str] = []
    for raw in organs:
        key = normalise_organ_name(str(raw))
        if not key:
            continue
        if key in by_name:
            ids.append(by_name[key])
        elif key.isdigit() and int(key) in names:
            ids.append(int(key))
        else:
            unknown.append(str(raw))
    if unknown:
        known = ", ".join(names.values())
        raise ValueError(f"unknown organ(s) {', '.join(map(repr, unknown))}; this model segments: {known}")
    if not ids:
        raise ValueError("no organ given (organs is empty)")
    return sorted(set(ids))


def parse_organ_list(text: str | None) -> tuple[str, ...] | None:
    """``"liver,spleen"`` -> ``("liver", "spleen")`` (the CLI's ``--organs``)."""
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())
