"""Which scans each optimiser step sees, in which phase, and with which random seed.

Everything is a pure function of (run seed, global step), not of a stateful RNG, so an interrupted
run that resumes at step k draws exactly the batches and pretext randomness an uninterrupted run
would, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from models.config import PretrainConfig
from models.data.cache import load_cached
from models.data.transforms import intensity_jitter, make_view

Item = tuple[int, int, int]  # (case index, sample seed, phase)


def steps_per_pass(n_cases: int, batch_size: int) -> int:
    return max(1, math.ceil(n_cases / batch_size))


def total_steps(cfg: PretrainConfig, n_cases: int) -> int:
    return cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_pass(n_cases, cfg.batch_size)


def phase_of_step(step: int, per_pass: int, alternate: str) -> int:
    """Phase 1 and phase 2 alternate per pass over the data (default) or per step."""
    turn = step // per_pass if alternate == "epoch" else step
    return 1 if turn % 2 == 0 else 2


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    return int(np.random.SeedSequence([seed, step, salt]).generate_state(1)[0])


def step_items(cfg: PretrainConfig, n_cases: int, step: int) -> list[Item]:
    """The global batch of ``step``: every pass visits the scans in a fresh order (wrapping at its end)."""
    per_pass = steps_per_pass(n_cases, cfg.batch_size)
    order = np.random.default_rng([cfg.seed, step // per_pass]).permutation(n_cases)
    start = (step % per_pass) * cfg.batch_size
    phase = phase_of_step(step, per_pass, cfg.alternate)
    return [(int(order[(start + i) % n_cases]), step_seed(cfg.seed, step, i + 1), phase) for i in range(cfg.batch_size)]


class StepSampler(Sampler[list[Item]]):
    """Yields this process's share of the global batch for steps ``start .. end - 1``."""

    def __init__(self, cfg: PretrainConfig, n_cases: int, start: int, end: int, rank: int = 0, world: int = 1):
        if cfg.batch_size % world:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} processes")
        self.cfg, self.n_cases, self.start, self.end, self.rank, self.world = cfg, n_cases, start, end, rank, world

    def __iter__(self) -> Iterator[list[Item]]:
        for step in range(self.start, self.end):
            yield step_items(self.cfg, self.n_cases, step)[self.rank :: self.world]

    def __len__(self) -> int:
        return max(0, self.end - self.start)


class PretrainViews(Dataset):
    """Maps an :data:`Item` to the network input of its phase, from the preprocessed cache."""

    def __init__(self, cached: list[Path], cfg: PretrainConfig):
        self.cached, self.cfg = cached, cfg

    def __len__(self) -> int:
        return len(self.cached)

    def load(self, case: int) -> torch.Tensor:
        """The cached float16 volume of ``case`` as float32 (read in float16, widened by torch: ~3x faster)."""
        return torch.from_numpy(np.array(load_cached(self.cached[case]))).float()

    def __getitem__(self, item: Item) -> torch.Tensor:
        case, seed, phase = item
        rng = np.random.default_rng(seed)
        volume = self.load(case)
        size = self.cfg.data.roi if phase == 1 else self.cfg.data.phase2_size
        view = make_view(volume, size, self.cfg.data.view, rng)
        return intensity_jitter(view, self.cfg.data.intensity_aug, rng)


def collate(batch: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(batch)
