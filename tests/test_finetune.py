"""Unit tests of finetuning's parts (no training step): weight transfer and its report, label sets and
maps, config presets, the case split, the preprocessing cache (RAM and disk), crops, Dice, CLI errors.

Networks are feature size 12; phantoms are 64 x 64 x 32 voxels.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_PHANTOM_SHAPE as PHANTOM_SHAPE
from conftest import TINY_PHANTOM_SPACING as PHANTOM_SPACING
from monai.networks.nets import SwinUNETR
from typer.testing import CliRunner

from models.cli import app
from models.data.datasets import Case, Dataset, load_dataset
from models.data.labels import BTCV_LABELS
from models.finetune.config import PRESETS, FinetuneConfig, build_finetune_config
from models.finetune.data import (
    PairStore,
    TrainCrops,
    cached_pair,
    coarse_data_config,
    collate,
    draws_coarse,
    split_cases,
    step_items,
)
from models.finetune.evaluate import evaluate
from models.finetune.labels import MAPS_DIR, apply_label_map, load_label_map, model_labels
from models.finetune.trainer import _stores
from models.finetune.transfer import load_teacher_state, random_init_report, transfer_weights
from models.io.reader import load_ct, load_label

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher(asa_run: Path) -> dict[str, torch.Tensor]:
    return load_teacher_state(asa_run)[0]


def seg_net(n_labels: int = 14, **kw: Any) -> SwinUNETR:
    torch.manual_seed(1)
    return SwinUNETR(in_channels=1, out_channels=n_labels, feature_size=12, **kw)


def small_cfg(cache_dir: Path, *overrides: str, **fields: Any) -> FinetuneConfig:
    return build_finetune_config(
        "cpu-demo", overrides=["data.spacing=[6,6,8]", f"data.cache_dir={cache_dir}", *overrides], **fields
    )


# -- 1. weight transfer ----------------------------------------------------------------------------
def test_full_transfer_copies_every_backbone_tensor_but_out(teacher: dict[str, torch.Tensor]) -> None:
    net = seg_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = transfer_weights(net, teacher, "full", "test")
    after = net.state_dict()
    backbone = {k[len("backbone.") :]: v for k, v in teacher.items() if k.startswith("backbone.")}
    heads = [k for k in teacher if not k.startswith("backbone.")]
    assert heads and all(k.split(".")[0] in {"order_head", "global_projector", "local_projector"} for k in heads)
    assert sorted(report.skipped_heads) == sorted(heads)
    assert report.skipped_excluded == ["out.conv.conv.weight", "out.conv.conv.bias"]
    assert report.random == ["out.conv.conv.bias", "out.conv.conv.weight"]
    assert report.skipped_shape == {} and report.skipped_unknown == []
    assert set(report.transferred) == set(after) - {"out.conv.conv.weight", "out.conv.conv.bias"}
    for name in report.transferred:
        assert torch.equal(after[name], backbone[name]), name
        if after[name].is_floating_point() and "relative_position_index" not in name:
            assert not torch.equal(after[name], before[name]) or torch.equal(backbone[name], before[name]), name
    for name in report.random:
        assert torch.equal(after[name], before[name]), name
    s = report.summary()
    assert s["transferred"] == len(after) - 2 and s["random"] == 2
    assert s["transferred_params"] + s["random_params"] == sum(t.numel() for t in after.values())
    assert s["random_params"] == 14 * 12 + 14  # the 1x1x1 conv from feature size 12 to 14 labels


def test_encoder_transfer_leaves_cnn_random(teacher: dict[str, torch.Tensor]) -> None:
    net = seg_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = transfer_weights(net, teacher, "encoder", "test")
    after = net.state_dict()
    assert report.transferred and all(k.startswith("swinViT.") for k in report.transferred)
    assert set(report.transferred) == {k for k in after if k.startswith("swinViT.")}
    assert set(report.random) == {k for k in after if not k.startswith("swinViT.")}
    assert any(k.startswith("decoder1.") for k in report.random)
    assert set(report.skipped_excluded) == {k[len("backbone.") :] for k in teacher if k.startswith("backbone.")} - set(
        report.transferred
    )
    for name in report.transferred:
        assert torch.equal(after[name], teacher[f"backbone.{name}"])
    for name in report.random:
        assert torch.equal(after[name], before[name])


def test_shape_mismatch_is_reported_not_loaded(teacher: dict[str, torch.Tensor]) -> None:
    net = seg_net(num_heads=(2, 4, 8, 16))  # other head counts: relative position bias tables differ in shape
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = transfer_weights(net, teacher, "full", "test")
    assert report.skipped_shape and all("relative_position_bias_table" in k for k in report.skipped_shape)
    for name, shapes in report.skipped_shape.items():
        assert shapes["target"] == list(before[name].shape) != shapes["source"]
        assert name in report.random and torch.equal(net.state_dict()[name], before[name])


def test_other_feature_size_fails_clearly(teacher: dict[str, torch.Tensor]) -> None:
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=24)
    with pytest.raises(ValueError, match="feature_size"):
        transfer_weights(net, teacher, "full", "test")


def test_random_init_report() -> None:
    net = seg_net()
    report = random_init_report(net)
    assert report.mode == "none" and report.transferred == [] and len(report.random) == len(net.state_dict())


def test_load_teacher_state_errors(tmp_path: Path, asa_run: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such run"):
        load_teacher_state(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint\.pt"):
        load_teacher_state(tmp_path)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an ASA checkpoint"):
        load_teacher_state(tmp_path / "other.pt")
    state, cfg = load_teacher_state(asa_run / "checkpoint.pt")
    assert cfg["network"]["feature_size"] == 12 and any(k.startswith("backbone.swinViT.") for k in state)


# -- 2. labels and label maps ----------------------------------------------------------------------
TOTALSEG_V2 = {  # TotalSegmentator v2 'total' ids (map_to_binary.py) of the 13 BTCV organs
    "spleen": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "gallbladder": 4,
    "liver": 5,
    "stomach": 6,
    "pancreas": 7,
    "adrenal_gland_right": 8,
    "adrenal_gland_left": 9,
    "esophagus": 15,
    "aorta": 52,
    "inferior_vena_cava": 63,
    "portal_vein_and_splenic_vein": 64,
}
TOTALSEG_TO_BTCV_NAME = {
    "spleen": "spleen",
    "kidney_right": "right kidney",
    "kidney_left": "left kidney",
    "gallbladder": "gallbladder",
    "esophagus": "esophagus",
    "liver": "liver",
    "stomach": "stomach",
    "aorta": "aorta",
    "inferior_vena_cava": "inferior vena cava",
    "portal_vein_and_splenic_vein": "portal and splenic veins",
    "pancreas": "pancreas",
    "adrenal_gland_right": "right adrenal gland",
    "adrenal_gland_left": "left adrenal gland",
}


def test_shipped_totalseg_to_btcv_map() -> None:
    mapping, names = load_label_map("totalseg_to_btcv")  # found by name among the shipped maps
    btcv_id = {name: i for i, name in BTCV_LABELS.items()}
    expected = {TOTALSEG_V2[ts]: btcv_id[b] for ts, b in TOTALSEG_TO_BTCV_NAME.items()}
    assert mapping == expected
    assert sorted(mapping.values()) == list(range(1, 14))
    labels = model_labels(Dataset([], {}, "ts", Path()), mapping, names)
    assert {i: info.name for i, info in labels.items()} == {0: "background", **BTCV_LABELS}
    ts = np.array([0, 5, 52, 90, 15, 117, 64])  # liver, aorta, brain, esophagus, costal cartilages, portal
    assert apply_label_map(ts, mapping).tolist() == [0, 6, 8, 0, 5, 0, 10]


def test_maps_are_package_data() -> None:
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"]["package-data"]["models.data"]
    assert any(Path("maps/totalseg_to_btcv.json").match(p) for p in patterns)
    assert (MAPS_DIR / "totalseg_to_btcv.json").is_file()


def test_label_map_json_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps({"_note": "x", "3": 1, "7": 2, "_names": {"1": "a", "2": "b"}}))
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({3: 1, 7: 2}))
    for name in ("m.json", "m.yaml"):
        mapping, _ = load_label_map(tmp_path / name)
        assert mapping == {3: 1, 7: 2}
    _, names = load_label_map(tmp_path / "m.json")
    labels = model_labels(Dataset([], {}, "d", tmp_path), {3: 1, 7: 2}, names)
    assert {i: v.name for i, v in labels.items()} == {0: "background", 1: "a", 2: "b"}
    assert apply_label_map(np.array([[0, 3], [7, 9]]), {3: 1, 7: 2}).tolist() == [[0, 1], [2, 0]]
    (tmp_path / "bad.json").write_text(json.dumps({"liver": 1}))
    with pytest.raises(ValueError, match="not an integer"):
        load_label_map(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="totalseg_to_btcv"):
        load_label_map(tmp_path / "nope.json")


def test_model_labels_from_dataset_or_btcv(tmp_path: Path) -> None:
    ds = Dataset([], {1: "liver", 2: "tumour"}, "d", tmp_path)
    assert {i: v.name for i, v in model_labels(ds, None, {}).items()} == {0: "background", 1: "liver", 2: "tumour"}
    assert len(model_labels(Dataset([], {}, "d", tmp_path), None, {})) == 14
    with pytest.raises(ValueError, match="--label-map"):
        model_labels(Dataset([], {1: "a", 5: "b"}, "d", tmp_path), None, {})


# -- 3. config -------------------------------------------------------------------------------------
def test_presets_and_overrides(tmp_path: Path) -> None:
    btcv = build_finetune_config("btcv")
    assert btcv.data.roi == 96 and btcv.data.spacing == (1.5, 1.5, 2.0)
    assert (btcv.data.hu_min, btcv.data.hu_max) == (-175.0, 250.0)
    assert btcv.data.num_samples == 4 and btcv.data.flip_prob == btcv.data.rot90_prob == 0.2
    assert (btcv.optim.lr, btcv.optim.weight_decay) == (1e-4, 1e-5)
    assert btcv.network.feature_size == 48 and btcv.eval.overlap == 0.5 and btcv.eval.mode == "gaussian"
    demo = build_finetune_config("cpu-demo", overrides=["eval.overlap=0.25"], steps=5, transfer="encoder")
    assert demo.network.feature_size == 12 and demo.data.roi == 64 and demo.steps == 5 and demo.transfer == "encoder"
    assert demo.eval.overlap == 0.25 and set(PRESETS) == {"btcv", "cpu-demo"}
    (tmp_path / "c.yaml").write_text("data:\n  roi: 128\n")
    assert build_finetune_config("cpu-demo", tmp_path / "c.yaml").data.roi == 128
    with pytest.raises(ValueError, match="unknown preset"):
        build_finetune_config("nope")
    with pytest.raises(ValueError, match="at least 64"):
        build_finetune_config("cpu-demo", overrides=["data.roi=32"])
    with pytest.raises(ValueError):
        build_finetune_config("cpu-demo", overrides=["network.nope=1"])


# -- 4. split --------------------------------------------------------------------------------------
def test_split_is_seeded_and_n_train_nested(tmp_path: Path) -> None:
    ds = Dataset(
        [Case(f"c{i}", tmp_path / f"c{i}.nii.gz", tmp_path / f"l{i}.nii.gz") for i in range(10)], {}, "d", tmp_path
    )
    cfg = build_finetune_config("btcv", overrides=["data.val_count=3"])
    train, val = split_cases(ds, cfg)
    assert len(val.cases) == 3 and len(train.cases) == 7
    assert not {c.id for c in val.cases} & {c.id for c in train.cases}
    subsets = []
    for k in (2, 4, 7):
        t, v = split_cases(ds, cfg.model_copy(update={"n_train": k}))
        assert [c.id for c in v.cases] == [c.id for c in val.cases], "validation set must not depend on n_train"
        assert len(t.cases) == k
        subsets.append({c.id for c in t.cases})
    assert subsets[0] < subsets[1] < subsets[2]
    assert [c.id for c in split_cases(ds, cfg)[0].cases] == [c.id for c in train.cases]
    other = split_cases(ds, cfg.model_copy(update={"seed": 5}))[1]
    assert [c.id for c in other.cases] != [c.id for c in val.cases]
    assert len(split_cases(ds, build_finetune_config("btcv"))[1].cases) == 2  # val_fraction 0.2
    with pytest.raises(ValueError, match="only 7 training cases"):
        split_cases(ds, cfg.model_copy(update={"n_train": 8}))


def test_step_items_are_a_function_of_seed_and_step() -> None:
    assert step_items(5, 2, 0, 3) == step_items(5, 2, 0, 3)
    assert step_items(5, 2, 0, 3) != step_items(5, 2, 1, 3)
    seen = [c for s in range(3) for c, _ in step_items(6, 2, 0, s)]
    assert sorted(seen) == list(range(6)), "one pass visits every case once"


# -- 5. preprocessing cache: RAM and disk --------------------------------------------------------------
def test_cache_ram_and_disk_give_the_same_data(tmp_path: Path, phantom_dir: Path) -> None:
    cfg = small_cfg(tmp_path / "cache")
    cases = load_dataset(phantom_dir).cases[:2]
    entries = [cached_pair(c, cfg.data, None, 14, tmp_path / "cache") for c in cases]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4
    mtimes = [p.stat().st_mtime_ns for pair in entries for p in pair]
    again = [cached_pair(c, cfg.data, None, 14, tmp_path / "cache") for c in cases]
    assert again == entries and [p.stat().st_mtime_ns for pair in again for p in pair] == mtimes, "cache reused"
    ram, disk = PairStore(entries, ram_budget_mb=64), PairStore(entries, ram_budget_mb=0)
    assert ram.in_ram and not disk.in_ram
    assert not isinstance(ram._images[0], np.memmap) and isinstance(disk._images[0], np.memmap)
    assert isinstance(disk._labels[0], np.memmap)
    for i in range(2):
        assert torch.equal(ram.image(i), disk.image(i)) and torch.equal(ram.label(i), disk.label(i))
    # training and validation data share the budget: each would fit alone, together they do not
    one = sum(p.stat().st_size for p in entries[0]) / 2**20
    both = sum(p.stat().st_size for pair in entries for p in pair) / 2**20
    assert one < both * 0.75
    train, val, coarse = _stores(entries[:1], entries[1:], None, both * 0.75)
    assert not train.in_ram and not val.in_ram and coarse is None
    train, val, _ = _stores(entries[:1], entries[1:], None, both)
    assert train.in_ram and val.in_ram
    train, val, coarse = _stores(entries[:1], entries[1:], entries[:1], both)  # the coarse copy counts too
    assert coarse is not None and not (train.in_ram or val.in_ram or coarse.in_ram)
    img, lab = ram.image(0), ram.label(0)
    assert img.shape == lab.shape and img.shape[0] == 1 and img.dtype == torch.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    ct = load_ct(cases[0].image)
    truth = load_label(cases[0].label, like=ct)
    assert set(np.unique(lab.numpy()).astype(int)) <= set(np.unique(truth).tolist())
    assert len(np.unique(lab.numpy())) > 5
    # physical size is kept (foreground crop only removes air): 6 mm voxels over a 346 mm field at most
    assert max(img.shape[1:3]) <= int(np.ceil(PHANTOM_SHAPE[0] * PHANTOM_SPACING[0] / 6.0)) + 1


def test_label_map_applies_in_the_cache(tmp_path: Path, phantom_dir: Path) -> None:
    cfg = small_cfg(tmp_path / "cache")
    case = load_dataset(phantom_dir).cases[0]
    plain = PairStore([cached_pair(case, cfg.data, None, 14, tmp_path / "cache")], 64).label(0)
    mapped = PairStore([cached_pair(case, cfg.data, {6: 1, 1: 2}, 3, tmp_path / "cache")], 64).label(0)
    assert torch.equal(mapped == 1, plain == 6) and torch.equal(mapped == 2, plain == 1)
    assert torch.equal(mapped == 0, (plain != 6) & (plain != 1))
    with pytest.raises(ValueError, match="outside the model's labels"):
        cached_pair(case, cfg.data, None, 3, tmp_path / "cache2")


def test_train_crops_are_seeded(tmp_path: Path, phantom_dir: Path) -> None:
    cfg = small_cfg(tmp_path / "cache", "data.num_samples=3")
    case = load_dataset(phantom_dir).cases[0]
    crops = TrainCrops(PairStore([cached_pair(case, cfg.data, None, 14, tmp_path / "cache")], 64), cfg.data)
    a, b, c = crops[(0, 11)], crops[(0, 11)], crops[(0, 12)]
    assert len(a) == 3 and a[0]["image"].shape == (1, 64, 64, 64) == a[0]["label"].shape
    assert all(
        torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"]) for x, y in zip(a, b, strict=True)
    )
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(a, c, strict=True))
    images, labels = collate([a, c])
    assert images.shape == labels.shape == (6, 1, 64, 64, 64)


def test_coarse_crops_come_from_the_case_at_the_fast_spacing(tmp_path: Path, phantom_dir: Path) -> None:
    cfg = small_cfg(tmp_path / "cache", "data.num_samples=1", "data.coarse_prob=0.5")
    coarse_cfg = coarse_data_config(cfg.data)
    assert coarse_cfg.spacing == tuple(2 * s for s in cfg.data.spacing) and coarse_cfg.coarse_prob == 0.5
    case = load_dataset(phantom_dir).cases[0]
    fine = PairStore([cached_pair(case, cfg.data, None, 14, tmp_path / "cache")], 64)
    coarse = PairStore([cached_pair(case, coarse_cfg, None, 14, tmp_path / "cache")], 64)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4  # its own cache entry
    # half the voxels per axis over the same body (the foreground crop's edge may move by a few fine voxels)
    assert all(abs(f - 2 * c) <= 4 for f, c in zip(fine.image(0).shape[1:], coarse.image(0).shape[1:], strict=True))
    draws = [draws_coarse(seed, 0.5) for seed in range(400)]
    assert draws == [draws_coarse(seed, 0.5) for seed in range(400)]  # a function of the seed
    assert 0.4 < np.mean(draws) < 0.6 and not any(draws_coarse(seed, 0.0) for seed in range(400))
    # the same transforms on the other store: a coarse item is the coarse volume's crop, a fine item the fine one's
    plain = cfg.data.model_copy(update={"coarse_prob": 0.0})
    mixed = TrainCrops(fine, cfg.data, coarse=coarse)
    only_fine, only_coarse = TrainCrops(fine, plain), TrainCrops(coarse, plain)
    for seed in (draws.index(True), draws.index(False)):
        expected = (only_coarse if draws[seed] else only_fine)[(0, seed)][0]
        assert torch.equal(mixed[(0, seed)][0]["image"], expected["image"])
    with pytest.raises(ValueError, match="coarse copy"):
        TrainCrops(fine, cfg.data)


# -- 6. Dice -----------------------------------------------------------------------------------------
class _Oracle(torch.nn.Module):
    """Reads the label back from an image that encodes it (image = label / 13): perfect segmentation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = torch.arange(14, dtype=x.dtype, device=x.device).view(1, 14, 1, 1, 1)
        return -((x * 13 - ids) ** 2)


class _Blank(_Oracle):
    """Background everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.zeros_like(x))


def test_dice_of_a_perfect_and_a_blank_prediction(tmp_path: Path) -> None:
    label = np.zeros((1, 70, 66, 40), np.uint8)
    label[0, 10:30, 10:30, 5:20] = 6
    label[0, 40:50, 40:60, 20:35] = 1
    np.save(tmp_path / "i.npy", (label / 13).astype(np.float16))
    np.save(tmp_path / "l.npy", label)
    store = PairStore([(tmp_path / "i.npy", tmp_path / "l.npy")], 64)
    cfg = build_finetune_config("cpu-demo")
    res = evaluate(_Oracle(), store, cfg, dict(BTCV_LABELS), torch.device("cpu"))
    assert res["mean_dice"] == pytest.approx(1.0)
    assert res["dice"]["liver"] == pytest.approx(1.0) and res["dice"]["spleen"] == pytest.approx(1.0)
    assert res["dice"]["aorta"] is None, "an organ absent from the ground truth has no Dice"
    blank = evaluate(_Blank(), store, cfg, dict(BTCV_LABELS), torch.device("cpu"))
    assert blank["mean_dice"] == 0.0


# -- 7. CLI errors: exit code 2, a message, no run directory -------------------------------------------
def _stderr(result: Any) -> str:
    text = result.output or ""
    try:
        text += result.stderr or ""
    except ValueError:
        pass
    return text


def test_cli_errors(tmp_path: Path, phantom_dir: Path, asa_run: Path) -> None:
    out = tmp_path / "run"

    def fails(args: list[str], *needles: str) -> None:
        res = runner.invoke(app, ["finetune", *args])
        text = _stderr(res)
        assert res.exit_code == 2, (args, res.exit_code, text, res.exception)
        assert "Traceback" not in text
        for needle in needles:
            assert needle in text, (args, text)
        assert not out.exists(), "a failed command must not create the run directory"

    data = ["--data", str(phantom_dir), "--out", str(out)]
    fails(data, "--pretrained, --data and --out are required")
    fails(["--pretrained", str(tmp_path / "nope"), *data], str(tmp_path / "nope"), "no such run")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    fails(["--pretrained", str(empty), *data], "no checkpoint.pt")
    fails(["--pretrained", "none", "--preset", "nope", *data], "unknown preset 'nope'")
    fails(["--pretrained", str(asa_run), "--preset", "cpu-demo", "--set", "data.roi=50", *data], "multiple of 32")
    fails(["--pretrained", "none", *data, "--label-map", str(tmp_path / "m.json")], "m.json")
    fails(["--pretrained", "none", *data, "--n-train", "99"], "--n-train 99")
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a", "b"):
        (scans / f"{name}.nii.gz").write_bytes((phantom_dir / "imagesTr" / "phantom_000.nii.gz").read_bytes())
    fails(["--pretrained", "none", "--data", str(scans), "--out", str(out)], "no label map", "labelled data")
    fails(["--resume", str(tmp_path)], "checkpoint.pt")


@pytest.mark.parametrize("command", ["finetune", "pretrain"])
def test_a_new_run_never_overwrites_a_run(tmp_path: Path, phantom_dir: Path, command: str) -> None:
    """The same command typed twice must not replace hours of training: --resume, or a deliberate rm."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.pt", "metrics.jsonl"):
        (run / name).write_text(f"the earlier run's {name}")
    args = [command, "--data", str(phantom_dir), "--out", str(run), "--preset", "cpu-demo", "--steps", "1"]
    res = runner.invoke(app, [*args, "--pretrained", "none"] if command == "finetune" else args)
    text = _stderr(res)
    assert res.exit_code == 2, (res.exit_code, text, res.exception)
    assert f"--out {run} already holds a run (model.pt, metrics.jsonl): --resume {run} continues it" in text
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "model.pt"]
    assert (run / "model.pt").read_text() == "the earlier run's model.pt"


def test_rand_slab_repeats_the_edge_slices_of_one_slab() -> None:
    from models.data.transforms import RandSlabd

    image = torch.rand(1, 8, 8, 32)
    label = torch.arange(32.0).expand(1, 8, 8, 32).clone()  # label = slice index: shows where each slice came from
    slab = RandSlabd("image", "label", prob=1.0, min_slices=4)
    for seed in range(20):
        slab.set_random_state(seed=seed)
        out = slab({"image": image, "label": label})
        source = out["label"][0, 0, 0].long()  # which input slice each output slice shows
        start, stop = int(source.min()), int(source.max()) + 1
        assert stop - start >= 4
        assert source.tolist() == [min(max(i, start), stop - 1) for i in range(32)]  # slab inside, edges repeated
        assert torch.equal(out["image"], image[..., source])  # the image moved exactly like its labels
        assert torch.equal(label[0, 0, 0], torch.arange(32.0))  # the input itself is not modified
    slab.set_random_state(seed=3)
    first = slab({"image": image, "label": label})["image"]
    slab.set_random_state(seed=3)
    assert torch.equal(first, slab({"image": image, "label": label})["image"])  # a function of the seed
    off = RandSlabd("image", "label", prob=0.0)({"image": image, "label": label})
    assert off["image"] is image


def test_training_crops_of_a_thin_scan_repeat_its_edge_slices_as_inference_does() -> None:
    from models.finetune.config import FinetuneDataConfig
    from models.finetune.data import train_transforms

    cfg = FinetuneDataConfig(roi=64, num_samples=2, flip_prob=0.0, rot90_prob=0.0, intensity_prob=0.0)
    image = torch.rand(1, 64, 64, 8)
    label = torch.zeros(1, 64, 64, 8)
    label[:, 20:40, 20:40] = 1
    transforms = train_transforms(cfg)
    transforms.set_random_state(seed=0)
    for crop in transforms({"image": image, "label": label}):
        z = crop["image"].shape[-1]
        assert z == 64
        kept = [k for k in range(z) if torch.equal(crop["image"][..., k], image[..., 0])]
        assert len(kept) > 20  # the 56 slices of padding copy the edge slices, none is blank
        assert not bool((crop["image"] == 0).all(dim=(0, 1, 2)).any())
        assert torch.equal(torch.as_tensor(crop["label"][..., 0]), label[..., 0])  # labels padded alike


def test_rand_contrast_phase_raises_each_organ_by_one_bolus_strength() -> None:
    from models.data.transforms import RandContrastPhased

    image = torch.full((1, 8, 8, 8), 0.5)
    image[:, :, :, 7] = 0.98  # near the window's top: must clip at 1, as the HU window would
    label = torch.zeros(1, 8, 8, 8)
    label[:, :4] = 6  # liver
    label[:, 4:6] = 8  # aorta
    phase = RandContrastPhased("image", "label", {6: 0.1, 8: 0.3}, prob=1.0)
    for seed in range(5):
        phase.set_random_state(seed=seed)
        out = phase({"image": image, "label": label})["image"]
        t = phase._strength
        assert 0.0 <= t <= 1.0
        assert torch.allclose(out[:, :4, :, :7], torch.tensor(0.5 + 0.1 * t))  # liver
        assert torch.allclose(out[:, 4:6, :, :7], torch.tensor(0.5 + 0.3 * t))  # aorta: same bolus, more
        assert torch.equal(out[:, 6:], image[:, 6:])  # background untouched
        assert float(out.max()) <= 1.0
    assert torch.equal(image[:, :, :, 0], torch.full((1, 8, 8), 0.5))  # input not modified in place
    off = RandContrastPhased("image", "label", {6: 0.1}, prob=0.0)({"image": image, "label": label})
    assert off["image"] is image


def test_contrast_offsets_follow_organ_names_and_the_hu_window() -> None:
    from models.finetune.config import FinetuneDataConfig
    from models.finetune.data import contrast_offsets

    cfg = FinetuneDataConfig(hu_min=-175.0, hu_max=250.0)
    offsets = contrast_offsets(cfg, {1: "Spleen", 4: "gallbladder", 6: "LIVER", 20: "Right_Kidney", 21: "tumour"})
    assert offsets == pytest.approx({1: 70 / 425, 6: 60 / 425, 20: 120 / 425})  # bile (0 HU) and unknowns left out
    custom = FinetuneDataConfig(contrast_hu={"tumour": 85.0})
    assert contrast_offsets(custom, {21: "tumour", 6: "liver"}) == pytest.approx({21: 85 / 425})
    default = FinetuneDataConfig()
    assert default.contrast_prob == 0.0  # off unless asked: the BTCV recipe has no such augmentation
