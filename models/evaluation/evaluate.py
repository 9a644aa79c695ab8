"""Segment every labelled case of a data set with one model and score it against the reference.

Scoring happens on the reader's canonical grid of each scan (the reference label is read onto it with
``load_label``, which refuses a label that is not on the scan's grid), so orientation mistakes show up as
low Dice instead of being hidden by a resampling step.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.data.datasets import Case
from models.evaluation.metrics import case_metrics, summarise
from models.inference.segmenter import Segmenter
from models.io.reader import CTReadError, load_label

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    per_case: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return summarise(self.per_case) if self.per_case else {"mean": {}, "per_case_mean": {}, "per_organ_mean": {}}


def check_labelled(cases: list[Case]) -> None:
    """Fail before any work when a case has no reference: a silent skip would change the mean."""
    missing = [c.id for c in cases if c.label is None]
    if missing:
        raise ValueError(f"{len(missing)} case(s) have no label map, cannot evaluate: {', '.join(missing[:10])}")
    if not cases:
        raise ValueError("no cases to evaluate")


def remap(label: np.ndarray, mapping: dict[int, int] | None) -> np.ndarray:
    if mapping is None:
        return label
    from models.finetune.labels import apply_label_map

    return apply_label_map(label, mapping)


def evaluate_cases(
    segmenter: Segmenter,
    cases: list[Case],
    *,
    mapping: dict[int, int] | None = None,
    dataset_labels: dict[int, str] | None = None,
    tolerance_mm: float = 2.0,
    progress: bool = False,
) -> Evaluation:
    """Dice, HD95 and NSD per case and organ; a case that cannot be read is reported, the rest go on.

    ``dataset_labels`` (the dataset's label id -> name) names the segments and ROIs of DICOM-SEG
    and RTSTRUCT references.
    """
    from tqdm.auto import tqdm

    from models.finetune.labels import source_label_names

    check_labelled(cases)
    organs = segmenter.spec.organ_names
    names = source_label_names(dataset_labels or {}, mapping, organs)
    result = Evaluation()
    for case in tqdm(cases, desc="evaluate", disable=not progress):
        t0 = time.perf_counter()
        try:
            seg = segmenter.segment(case.image)
            assert case.label is not None
            ref = remap(load_label(case.label, like=seg.ct, names=names), mapping)
        except (CTReadError, ValueError, FileNotFoundError) as exc:
            log.error("%s: %s", case.id, exc)
            result.errors[case.id] = str(exc)
            continue
        unknown = sorted(set(np.unique(ref).tolist()) - set(organs) - {0})
        if unknown:
            log.warning("%s: reference ids %s are not labels of this model (ignored)", case.id, unknown)
        result.per_case[case.id] = case_metrics(seg.canonical_labels(), ref, organs, seg.ct.spacing, tolerance_mm)
        result.seconds[case.id] = time.perf_counter() - t0
        mean = np.nanmean([m["dice"] for m in result.per_case[case.id].values()] or [math.nan])
        log.info("%s: mean Dice %.4f (%.1f s)", case.id, mean, result.seconds[case.id])
    return result
