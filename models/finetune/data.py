"""Finetuning data: split, preprocess once into a cache, then random crops per step (MONAI dict transforms).

Why this shape:

* Preprocessing (reader → label remap → spacing → HU window → foreground crop) is the slow, deterministic
  part. Each (image, label) pair goes through it once and is cached on disk (float16 image, uint8
  label), so ranks of a ``torchrun`` job and resumed runs reuse it. The cached data set is then read
  into RAM only when it fits ``data.cache_ram_mb``; otherwise every step memory-maps the case it needs,
  so a data set never has to fit in RAM.
* Augmentation (pos/neg crops, flips, rot90, intensity) is drawn from a seed that is a pure function of
  (run seed, step, item), exactly as in pretraining, so a resumed run sees the batches an uninterrupted
  one would, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    Lambdad,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

from models.data.datasets import Case, Dataset, split_holdout
from models.data.labels import normalise_organ_name
from models.data.transforms import THIN_SCAN_PADDING, RandContrastPhased, RandSlabd, anti_alias
from models.finetune.config import FinetuneConfig, FinetuneDataConfig
from models.finetune.labels import apply_label_map
from models.modeldir import FAST_SPACING_FACTOR
from models.training import step_seed

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: anti-aliasing before resampling
Item = tuple[int, int]  # (case index, augmentation seed)


class DataError(ValueError):
    """A case that cannot be used as it is (e.g. label ids outside the model's labels): the user's to fix."""


# -- which cases -----------------------------------------------------------------------------------
def split_cases(dataset: Dataset, cfg: FinetuneConfig) -> tuple[Dataset, Dataset]:
    """Validation cases held out by seed, then the first ``n_train`` training cases of a seeded order.

    The validation set depends only on (seed, size of the hold-out), never on ``n_train``, and the
    training subsets of one seed are nested (K=2 ⊂ K=4 ⊂ ...): what label-efficiency curves need.
    """
    n = len(dataset.cases)
    d = cfg.data
    n_val = d.val_count if d.val_count is not None else (max(1, round(d.val_fraction * n)) if d.val_fraction else 0)
    if n_val >= n:
        raise ValueError(f"{dataset.name}: cannot hold out {n_val} validation cases of {n} (none left to train on)")
    train, val = split_holdout(dataset, n_val, cfg.seed)
    if cfg.n_train is not None:
        if cfg.n_train > len(train.cases):
            raise ValueError(
                f"{dataset.name}: --n-train {cfg.n_train} but only {len(train.cases)} training cases "
                f"({n_val} of {n} are held out for validation)"
            )
        order = np.random.default_rng([cfg.seed, 0x7A11]).permutation(len(train.cases))
        keep = sorted(order[: cfg.n_train].tolist())
        train = dataclasses.replace(train, cases=[train.cases[i] for i in keep])
    return train, val


# -- preprocessing and its cache -------------------------------------------------------------------
def _source_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return files


def pair_key(
    case: Case, cfg: FinetuneDataConfig, mapping: dict[int, int] | None, names: dict[int, str] | None = None
) -> str:
    """Cache key over the source files (path, size, mtime) and every setting that changes the result."""
    images = case.image if isinstance(case.image, list) else [case.image]
    h = hashlib.sha1()
    for f in _source_files([Path(p) for p in images] + ([Path(case.label)] if case.label else [])):
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    settings = {
        "spacing": cfg.spacing,
        "hu": (cfg.hu_min, cfg.hu_max),
        "fg": cfg.foreground_crop,
        "map": sorted(mapping.items()) if mapping else None,
        "names": sorted(names.items()) if names else None,
        "v": CACHE_VERSION,
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:20]


def _remap(label: torch.Tensor, mapping: dict[int, int]) -> torch.Tensor:
    """Remap in place, so the MetaTensor keeps its affine for ``Spacingd``."""
    mapped = apply_label_map(np.asarray(label.detach().cpu()), mapping)
    return label.copy_(torch.from_numpy(mapped).to(label.dtype))


def preprocess_pipeline(
    cfg: FinetuneDataConfig, mapping: dict[int, int] | None, names: dict[int, str] | None = None
) -> Compose:
    """Reader → label remap → spacing → HU window to [0, 1] → foreground crop (MONAI dict transforms).

    ``names`` (the dataset's label id -> name, before ``mapping``) is what DICOM-SEG segments and RTSTRUCT ROIs
    are matched to.
    """
    from models.io.monai_load import LoadCTd

    keys = ["image", "label"]
    steps: list[Any] = [LoadCTd(keys="image", label_keys="label", label_names=names)]
    if mapping:
        steps.append(Lambdad("label", lambda x: _remap(x, mapping)))
    steps += [
        Lambdad("image", lambda x: anti_alias(x, cfg.spacing)),
        Spacingd(keys, pixdim=cfg.spacing, mode=("bilinear", "nearest"), padding_mode=("border", "zeros")),
        ScaleIntensityRanged("image", a_min=cfg.hu_min, a_max=cfg.hu_max, b_min=0.0, b_max=1.0, clip=True),
    ]
    if cfg.foreground_crop:
        steps.append(CropForegroundd(keys, source_key="image", allow_smaller=True))
    return Compose(steps)


def preprocess_pair(
    case: Case, cfg: FinetuneDataConfig, mapping: dict[int, int] | None, n_labels: int,
    names: dict[int, str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(1, X, Y, Z) float16 image in [0, 1] and uint8 label at ``cfg.spacing``; checks the label ids."""
    if case.label is None:
        raise DataError(f"case {case.id}: no label map")
    out = preprocess_pipeline(cfg, mapping, names)({"image": case.image, "label": case.label})
    image = np.asarray(out["image"].numpy(), dtype=np.float16)
    label = np.rint(out["label"].numpy())
    top = int(label.max()) if label.size else 0
    if top >= n_labels or (label.size and label.min() < 0):
        raise DataError(
            f"case {case.id}: label id {top} is outside the model's labels 0..{n_labels - 1} "
            "(pass --label-map to map the dataset's ids)"
        )
    return image, label.astype(np.uint8)


def cached_pair(
    case: Case, cfg: FinetuneDataConfig, mapping: dict[int, int] | None, n_labels: int, cache_dir: Path,
    names: dict[int, str] | None = None,
) -> tuple[Path, Path]:
    """Paths of the cached image and label of ``case``, preprocessing it first if needed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = pair_key(case, cfg, mapping, names)
    img_path, lab_path = cache_dir / f"{key}.image.npy", cache_dir / f"{key}.label.npy"
    if img_path.exists() and lab_path.exists():
        return img_path, lab_path
    image, label = preprocess_pair(case, cfg, mapping, n_labels, names)
    for arr, target in ((label, lab_path), (image, img_path)):  # image last: it marks a complete entry
        tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, arr)
        tmp.replace(target)
    return img_path, lab_path


class PairStore:
    """The cached (image, label) pairs, in RAM when they fit ``ram_budget_mb``, else memory-mapped.

    Images stay float16 in memory (half the RAM of float32) and are widened per read.
    """

    def __init__(self, entries: list[tuple[Path, Path]], ram_budget_mb: float) -> None:
        self.entries = entries
        self.nbytes = sum(p.stat().st_size for pair in entries for p in pair)
        self.in_ram = self.nbytes <= ram_budget_mb * 2**20
        mode = None if self.in_ram else "r"
        self._images = [np.load(img, mmap_mode=mode) for img, _ in entries]
        self._labels = [np.load(lab, mmap_mode=mode) for _, lab in entries]
        log.info(
            "%d cases, %.1f MB preprocessed: %s",
            len(entries),
            self.nbytes / 2**20,
            "held in RAM" if self.in_ram else f"memory-mapped from disk (over the {ram_budget_mb:g} MB RAM budget)",
        )

    def __len__(self) -> int:
        return len(self.entries)

    def image(self, i: int) -> torch.Tensor:
        """(1, X, Y, Z) float32."""
        return torch.from_numpy(np.array(self._images[i])).float()

    def label(self, i: int) -> torch.Tensor:
        """(1, X, Y, Z) float32 label ids (what MONAI's crop and loss transforms expect)."""
        return torch.from_numpy(np.array(self._labels[i])).float()


# -- per-step crops --------------------------------------------------------------------------------
def contrast_offsets(cfg: FinetuneDataConfig, organ_names: dict[int, str]) -> dict[int, float]:
    """Label id -> largest simulated enhancement in window units, for the organs ``contrast_hu`` names.

    Names match whatever their case, spaces, hyphens or underscores, so a dataset's ``Right_Kidney``
    finds ``right kidney``; organs it does not name are not enhanced.
    """

    hu = {normalise_organ_name(k): v for k, v in cfg.contrast_hu.items()}
    width = cfg.hu_max - cfg.hu_min
    rises = {i: hu.get(normalise_organ_name(n), 0.0) for i, n in organ_names.items()}
    return {i: rise / width for i, rise in rises.items() if rise > 0}


def train_transforms(cfg: FinetuneDataConfig, offsets: dict[int, float] | None = None) -> Compose:
    """The BTCV recipe's augmentation: pad to the roi, pos/neg crops, flips, rot90, intensity scale/shift.

    Plus, when ``slab_prob`` > 0, thin-slab crops (:class:`models.data.transforms.RandSlabd`), and when
    ``contrast_prob`` > 0, a simulated contrast phase (:class:`models.data.transforms.RandContrastPhased`,
    ``offsets`` from :func:`contrast_offsets`), before the global intensity changes.
    """
    keys = ["image", "label"]
    roi = (cfg.roi,) * 3
    return Compose(
        [
            SpatialPadd(keys, spatial_size=roi, mode=THIN_SCAN_PADDING),  # as inference pads thin scans
            RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=roi,
                pos=cfg.pos,
                neg=cfg.neg,
                num_samples=cfg.num_samples,
                image_key="image",
                image_threshold=0,
            ),
            RandSlabd("image", "label", prob=cfg.slab_prob, min_slices=cfg.slab_min_slices),
            *[RandFlipd(keys, prob=cfg.flip_prob, spatial_axis=axis) for axis in range(3)],
            RandRotate90d(keys, prob=cfg.rot90_prob, max_k=3),
            RandContrastPhased("image", "label", offsets or {}, prob=cfg.contrast_prob),
            RandScaleIntensityd("image", factors=cfg.intensity_scale, prob=cfg.intensity_prob),
            RandShiftIntensityd("image", offsets=cfg.intensity_shift, prob=cfg.intensity_prob),
        ]
    )


def coarse_data_config(cfg: FinetuneDataConfig) -> FinetuneDataConfig:
    """``cfg`` at the fast spacing (:data:`models.modeldir.FAST_SPACING_FACTOR` times it): a cache of its own."""
    return cfg.model_copy(update={"spacing": tuple(s * FAST_SPACING_FACTOR for s in cfg.spacing)})


def draws_coarse(seed: int, prob: float) -> bool:
    """Whether the item of augmentation seed ``seed`` is cropped from the coarse copy of its case.

    A pure function of the seed, like every other augmentation, so resumed runs see the same batches.
    """
    return prob > 0 and np.random.default_rng([seed, 0xC0A55E]).random() < prob


class TrainCrops(TorchDataset):
    """Maps an :data:`Item` to ``num_samples`` augmented (image, label) crops of one case.

    With ``coarse`` (the same cases preprocessed by :func:`coarse_data_config`), a share ``coarse_prob``
    of the items is cropped from there instead: multi-scale training, so the model also works at the
    spacing ``asa segment --fast`` uses.
    """

    def __init__(
        self,
        store: PairStore,
        cfg: FinetuneDataConfig,
        offsets: dict[int, float] | None = None,
        coarse: PairStore | None = None,
    ) -> None:
        if cfg.coarse_prob > 0 and (coarse is None or len(coarse) != len(store)):
            raise ValueError("data.coarse_prob > 0 needs the coarse copy of every training case")
        self.store, self.cfg, self.coarse = store, cfg, coarse
        self.transforms = train_transforms(cfg, offsets)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, item: Item) -> list[dict[str, torch.Tensor]]:
        case, seed = item
        store = self.coarse if self.coarse is not None and draws_coarse(seed, self.cfg.coarse_prob) else self.store
        self.transforms.set_random_state(seed=seed % 2**32)
        crops = self.transforms({"image": store.image(case), "label": store.label(case)})
        return [{k: torch.as_tensor(v).as_subclass(torch.Tensor).contiguous() for k, v in c.items()} for c in crops]


def collate(batch: list[list[dict[str, torch.Tensor]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of every volume of the step, stacked: images (N, 1, r, r, r), labels (N, 1, r, r, r)."""
    crops = [c for volume in batch for c in volume]
    return torch.stack([c["image"] for c in crops]), torch.stack([c["label"] for c in crops])


def step_items(n_cases: int, batch_size: int, seed: int, step: int) -> list[Item]:
    """The global batch of ``step``: each pass visits the cases in a fresh seeded order (wrapping)."""
    per_pass = max(1, math.ceil(n_cases / batch_size))
    order = np.random.default_rng([seed, step // per_pass]).permutation(n_cases)
    start = (step % per_pass) * batch_size
    return [(int(order[(start + i) % n_cases]), step_seed(seed, step, i + 1)) for i in range(batch_size)]


class StepSampler(Sampler[list[Item]]):
    """Yields this process's share of the global batch for steps ``start .. end - 1``."""

    def __init__(self, n_cases: int, batch_size: int, seed: int, start: int, end: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} is not divisible by {world} processes")
        self.n_cases, self.batch_size, self.seed = n_cases, batch_size, seed
        self.start, self.end, self.rank, self.world = start, end, rank, world

    def __iter__(self) -> Iterator[list[Item]]:
        for step in range(self.start, self.end):
            yield step_items(self.n_cases, self.batch_size, self.seed, step)[self.rank :: self.world]

    def __len__(self) -> int:
        return max(0, self.end - self.start)
