"""Preprocess each scan once and keep it on disk, so a data set never has to fit in RAM.

Entries are float16 ``.npy`` files (the HU window maps to [0, 1], where float16 is exact enough)
read back memory-mapped. The key covers the source files (path, size, mtime) and every
preprocessing setting, so a changed scan or setting never reuses a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.config import DataConfig


def _source_files(image: Path | Sequence[Path]) -> list[Path]:
    paths = [Path(p) for p in image] if isinstance(image, list | tuple) else [Path(image)]
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return files


def cache_key(image: Path | Sequence[Path], cfg: DataConfig) -> str:
    h = hashlib.sha1()
    for f in _source_files(image):
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    settings = {"spacing": cfg.spacing, "hu": (cfg.hu_min, cfg.hu_max), "v": 2}  # v2: anti-aliasing
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:20]


def cached_volume(image: Path | Sequence[Path], cfg: DataConfig, cache_dir: Path) -> Path:
    """Path of the preprocessed (1, X, Y, Z) float16 array of ``image``, computing it if needed."""
    from models.data.transforms import preprocess  # heavy MONAI import only when work is needed
    from models.io.reader import load_ct

    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{cache_key(image, cfg)}.npy"
    if target.exists():
        return target
    volume = preprocess(load_ct(image), cfg).numpy().astype(np.float16)
    tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, volume)
    tmp.replace(target)  # atomic: a concurrent reader never sees half a file
    return target


def load_cached(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")
