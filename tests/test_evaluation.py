"""Evaluation metrics on masks with known answers, the BTCV averaging, and `asa evaluate` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from segment_helpers import (
    ThresholdNet,
    reoriented,
    small_phantom,
    swin_model_dir,
    threshold_labels,
    threshold_spec,
    write_nifti,
)
from typer.testing import CliRunner

from models.cli import app
from models.data.datasets import Case
from models.evaluation.evaluate import evaluate_cases
from models.evaluation.metrics import METRICS, case_metrics, organ_metrics, summarise
from models.evaluation.report import write_report
from models.inference import Segmenter

THRESHOLDS = (0.5, 150.5)
SPACING = (5.4, 5.4, 6.0)
runner = CliRunner()


def cube(shape=(30, 30, 30), start=(10, 10, 10), size=10) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(s, s + size) for s in start)] = True
    return m


# -- metrics ---------------------------------------------------------------------------------------
def test_identical_masks_are_perfect() -> None:
    m = organ_metrics(cube(), cube(), (1.5, 1.5, 3.0), tolerance_mm=1.0)
    assert m == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0, "abs_volume_error_pct": 0.0, "volume_error_pct": 0.0,
                 "volume_pred_ml": pytest.approx(6.75), "volume_ref_ml": pytest.approx(6.75)}  # 1000 x 6.75 mm³


def test_volume_error_is_relative_to_the_reference_and_signed() -> None:
    big, small = cube(size=10), cube(size=8)  # 1000 and 512 voxels of 2 mm³
    over = organ_metrics(big, small, (1.0, 1.0, 2.0), 1.0)
    assert over["volume_pred_ml"] == pytest.approx(2.0) and over["volume_ref_ml"] == pytest.approx(1.024)
    assert over["volume_error_pct"] == pytest.approx(95.3125) and over["abs_volume_error_pct"] == pytest.approx(95.3125)
    under = organ_metrics(small, big, (1.0, 1.0, 2.0), 1.0)
    assert under["volume_error_pct"] == pytest.approx(-48.8) and under["abs_volume_error_pct"] == pytest.approx(48.8)
    empty = np.zeros_like(big)
    assert organ_metrics(empty, big, (1, 1, 1), 1.0)["volume_error_pct"] == -100.0
    assert math.isnan(organ_metrics(big, empty, (1, 1, 1), 1.0)["volume_error_pct"])  # no reference to compare to


def test_shifted_cube_has_the_expected_dice_distance_and_nsd() -> None:
    """A 10³ cube moved 2 voxels along x (1.5 mm voxels): overlap 8/10, every surface point within 3 mm."""
    a, b = cube(), cube(start=(12, 10, 10))
    m = organ_metrics(a, b, (1.5, 1.0, 1.0), tolerance_mm=3.01)
    assert m["dice"] == pytest.approx(0.8)
    assert 0 < m["hd95"] <= 3.0 + 1e-6
    assert m["nsd"] == pytest.approx(1.0)
    tight = organ_metrics(a, b, (1.5, 1.0, 1.0), tolerance_mm=0.5)
    assert tight["nsd"] < 0.9  # the two x faces are 3 mm apart: outside a 0.5 mm tolerance
    far = organ_metrics(a, b, (15.0, 1.0, 1.0), tolerance_mm=3.01)
    assert far["hd95"] == pytest.approx(30.0)  # spacing is honoured: 2 voxels of 15 mm


def test_absent_organs_follow_the_btcv_conventions() -> None:
    empty = np.zeros((8, 8, 8), bool)
    both = organ_metrics(empty, empty, (1, 1, 1), 1.0)
    assert all(math.isnan(both[m]) for m in METRICS) and both["volume_ref_ml"] == 0.0
    missed = organ_metrics(empty, cube((8, 8, 8), (2, 2, 2), 3), (1, 1, 1), 1.0)
    assert missed["dice"] == 0.0 and missed["nsd"] == 0.0 and math.isnan(missed["hd95"])
    with pytest.raises(ValueError, match="same grid"):
        organ_metrics(empty, np.zeros((8, 8, 9), bool), (1, 1, 1), 1.0)


def test_mean_over_organs_then_cases() -> None:
    per_case = {
        "a": {"liver": {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}, "spleen": {"dice": 0.5, "hd95": 4.0, "nsd": 0.5}},
        "b": {
            "liver": {"dice": 0.0, "hd95": math.nan, "nsd": 0.0},
            "spleen": {"dice": math.nan, "hd95": math.nan, "nsd": math.nan},
        },
    }
    s = summarise(per_case)
    assert s["per_case_mean"]["a"]["dice"] == 0.75 and s["per_case_mean"]["b"]["dice"] == 0.0
    assert s["mean"]["dice"] == 0.375  # not the pooled 0.5 over the three scored pairs
    assert s["mean"]["hd95"] == 2.0  # case b has no defined distance: left out
    assert s["per_organ_mean"]["spleen"]["dice"] == 0.5


def test_case_metrics_names_organs_and_skips_background() -> None:
    pred = np.zeros((10, 10, 10), np.uint8)
    pred[2:5, 2:5, 2:5] = 1
    out = case_metrics(pred, pred.copy(), {0: "background", 1: "liver", 2: "spleen"}, (1, 1, 1))
    assert set(out) == {"liver", "spleen"} and out["liver"]["dice"] == 1.0 and math.isnan(out["spleen"]["dice"])


# -- evaluation end to end -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled_cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    """The same phantom stored RAS and LPS, each with its exact threshold labels on its own grid."""
    root = tmp_path_factory.mktemp("eval")
    hu, _, affine = small_phantom()
    cases = []
    for name, flips in {"ras": (False, False, False), "lps": (True, True, False)}.items():
        data, aff = reoriented(hu, affine, (0, 1, 2), flips)
        image = write_nifti(root / f"{name}.nii.gz", data, aff)
        label = write_nifti(root / f"{name}_seg.nii.gz", threshold_labels(data, THRESHOLDS), aff)
        cases.append(Case(id=name, image=image, label=label))
    return cases


def test_evaluate_cases_scores_a_perfect_model_perfectly(labelled_cases: list[Case], tmp_path: Path) -> None:
    segmenter = Segmenter(ThresholdNet(THRESHOLDS), threshold_spec(["soft tissue", "dense"], SPACING), device="cpu")
    evaluation = evaluate_cases(segmenter, labelled_cases)
    assert set(evaluation.per_case) == {"ras", "lps"} and not evaluation.errors
    for organs in evaluation.per_case.values():
        for values in organs.values():
            assert {m: values[m] for m in METRICS} == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0, "abs_volume_error_pct": 0}
            assert values["volume_pred_ml"] == values["volume_ref_ml"] > 0
    # the same physical scan stored RAS and LPS: the same volumes
    assert evaluation.per_case["ras"]["dense"]["volume_ref_ml"] == evaluation.per_case["lps"]["dense"]["volume_ref_ml"]
    doc = write_report(evaluation, tmp_path, {"model": "threshold"})
    assert doc["mean"] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0, "abs_volume_error_pct": 0.0}
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == ("case,organ,dice,hd95,nsd,abs_volume_error_pct,volume_pred_ml,volume_ref_ml,"
                       "volume_error_pct") and len(rows) == 1 + 2 * 2  # fmt: skip
    assert (tmp_path / "dice.png").stat().st_size > 1000

    # a label map that swaps the two classes of the reference: the same model now scores 0
    swapped = evaluate_cases(segmenter, labelled_cases, mapping={1: 2, 2: 1})
    assert swapped.summary()["mean"]["dice"] == 0.0


def test_unreadable_case_is_reported_and_the_others_scored(labelled_cases: list[Case], tmp_path: Path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    segmenter = Segmenter(ThresholdNet(THRESHOLDS), threshold_spec(["soft tissue", "dense"], SPACING), device="cpu")
    cases = [*labelled_cases[:1], Case(id="broken", image=bad, label=labelled_cases[0].label)]
    evaluation = evaluate_cases(segmenter, cases)
    assert list(evaluation.per_case) == ["ras"] and "broken" in evaluation.errors
    with pytest.raises(ValueError, match=r"no label map.*nolabel"):
        evaluate_cases(segmenter, [Case(id="nolabel", image=labelled_cases[0].image)])


def test_evaluate_cli(labelled_cases: list[Case], tmp_path: Path) -> None:
    """`asa evaluate` on an MSD dataset with a real (random) SwinUNETR model directory; errors exit 2."""
    root = Path(labelled_cases[0].image).parent
    spec = {
        "name": "eval",
        "labels": {"0": "background", "1": "soft tissue", "2": "dense"},
        "training": [{"image": f"./{c.id}.nii.gz", "label": f"./{c.id}_seg.nii.gz"} for c in labelled_cases],
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    model = swin_model_dir(tmp_path / "model", names=("soft tissue", "dense"), roi=64, spacing=SPACING)
    res = runner.invoke(app, ["evaluate", "--model", str(model), "--data", str(root / "dataset.json"),
                              "--out", str(tmp_path / "ev"), "--no-progress", "--cases", "ras"])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert list(doc["per_case"]) == ["ras"] and set(doc["per_organ_mean"]) == {"soft tissue", "dense"}
    assert 0.0 <= doc["mean"]["dice"] <= 1.0

    res = runner.invoke(app, ["evaluate", "--model", str(model), "--data", str(root / "dataset.json"),
                              "--out", str(tmp_path / "ev2"), "--cases", "nope"])  # fmt: skip
    assert res.exit_code == 2 and "unknown case id" in res.output
    res = runner.invoke(app, ["evaluate", "--model", str(tmp_path), "--data", str(root / "dataset.json"),
                              "--out", str(tmp_path / "ev3")])  # fmt: skip
    assert res.exit_code == 2 and "model" in res.output
