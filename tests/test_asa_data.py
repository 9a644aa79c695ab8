"""Preprocessing, the on-disk cache and the step plan (which scans, phase and seed each step uses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.asa.data import StepSampler, phase_of_step, step_items, steps_per_pass, total_steps
from models.config import build_config
from models.data.cache import cache_key, cached_volume, load_cached
from models.data.transforms import intensity_jitter, make_view, preprocess
from models.io.reader import load_ct, save_nifti


@pytest.fixture()
def scan(tmp_path):
    """A 40×30×20 scan at 2×2×3 mm, HU from -1000 to 1000 along the first axis."""
    hu = np.broadcast_to(np.linspace(-1000, 1000, 40)[:, None, None], (40, 30, 20)).astype(np.int16)
    path = tmp_path / "scan.nii.gz"
    save_nifti(hu, np.diag([2.0, 2.0, 3.0, 1.0]), path)
    return path


def test_preprocess_resamples_and_windows(scan) -> None:
    cfg = build_config("cpu-demo", overrides=["data.spacing=[4.0, 4.0, 6.0]"]).data
    out = preprocess(load_ct(scan), cfg)
    # same field of view at twice the spacing (MONAI rounds the extent to whole voxels)
    assert out.shape[0] == 1 and all(abs(a - b) <= 1 for a, b in zip(out.shape[1:], (20, 15, 10), strict=True))
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0  # clipped HU window -175..250
    assert np.allclose(np.abs(np.diag(out.affine.numpy()))[:3], [4.0, 4.0, 6.0])


def test_views_have_the_right_size_and_crops_depend_only_on_the_seed() -> None:
    vol = torch.rand(1, 50, 40, 30)
    assert make_view(vol, 64, "resize", np.random.default_rng(0)).shape == (1, 64, 64, 64)
    a = make_view(torch.rand(1, 80, 80, 80), 32, "crop", np.random.default_rng(7))
    b = make_view(torch.rand(1, 80, 80, 80), 32, "crop", np.random.default_rng(7))
    assert a.shape == (1, 32, 32, 32)
    big = torch.arange(80**3, dtype=torch.float32).reshape(1, 80, 80, 80)
    c1 = make_view(big, 32, "crop", np.random.default_rng(7))
    c2 = make_view(big, 32, "crop", np.random.default_rng(7))
    assert torch.equal(c1, c2) and b.shape == a.shape
    assert make_view(vol, 64, "crop", np.random.default_rng(0)).shape == (1, 64, 64, 64)  # padded
    with pytest.raises(ValueError, match="unknown view"):
        make_view(vol, 64, "warp", np.random.default_rng(0))


def test_intensity_jitter_is_off_by_default_and_stays_in_range() -> None:
    x = torch.rand(1, 8, 8, 8)
    assert torch.equal(intensity_jitter(x, 0.0, np.random.default_rng(0)), x)
    y = intensity_jitter(x, 0.2, np.random.default_rng(0))
    assert not torch.equal(x, y) and y.min() >= 0 and y.max() <= 1


def test_cache_is_reused_and_keyed_by_settings(scan, tmp_path) -> None:
    cfg = build_config("cpu-demo").data
    first = cached_volume(scan, cfg, tmp_path / "cache")
    mtime = first.stat().st_mtime_ns
    assert cached_volume(scan, cfg, tmp_path / "cache") == first and first.stat().st_mtime_ns == mtime
    assert load_cached(first).dtype == np.float16
    other = cfg.model_copy(update={"hu_min": -500.0})
    assert cache_key(scan, other) != cache_key(scan, cfg)


def test_step_plan_is_pure_visits_every_scan_per_pass_and_alternates() -> None:
    cfg = build_config("cpu-demo", batch_size=4, seed=3)
    n = 10
    per_pass = steps_per_pass(n, 4)
    assert per_pass == 3 and total_steps(cfg, n) == cfg.epochs * 3
    assert step_items(cfg, n, 5) == step_items(cfg, n, 5)
    seen = {case for step in range(per_pass) for case, _, _ in step_items(cfg, n, step)}
    assert seen == set(range(n))
    assert [phase_of_step(s, 3, "epoch") for s in range(7)] == [1, 1, 1, 2, 2, 2, 1]
    assert [phase_of_step(s, 3, "step") for s in range(4)] == [1, 2, 1, 2]
    seeds = [seed for s in range(6) for _, seed, _ in step_items(cfg, n, s)]
    assert len(set(seeds)) == len(seeds)


def test_sampler_shards_the_global_batch_across_processes() -> None:
    cfg = build_config("cpu-demo", batch_size=4)
    whole = list(StepSampler(cfg, 9, 2, 5))
    parts = [list(StepSampler(cfg, 9, 2, 5, rank=r, world=2)) for r in range(2)]
    for step, batch in enumerate(whole):
        assert sorted(parts[0][step] + parts[1][step]) == sorted(batch)
    with pytest.raises(ValueError, match="not divisible"):
        StepSampler(cfg, 9, 0, 1, rank=0, world=3)
