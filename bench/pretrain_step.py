"""Benchmark one ASA pretraining step against the pure compute floor, measured in the same run.

*Full step* = exactly what ``models.asa.trainer.pretrain`` does per optimiser step: fetch the batch
through ``PretrainViews`` from the on-disk preprocessed cache, collate, move it to the device,
``ASA.phase1`` / ``ASA.phase2`` (shuffling or cropping, matching, heads, losses, metrics),
``zero_grad``, ``backward``, gradient clipping (when configured), ``optimizer.step`` and
``update_teacher``.

*Floor* = the network compute alone, on the same shapes, with the same precision and flags, no data
work and no pretext work:

* phase 1: student full U-Net ``net(x)`` on (B, 1, roi³), backward of ``recon.mean() + tokens.mean()``,
  teacher ``encode`` under ``no_grad`` on (B, 1, roi³), zero_grad, gradient clipping (when configured)
  and ``optimizer.step``;
* phase 2: student ``encode`` on (2B, 1, roi³), backward of ``tokens.mean()``, teacher ``encode`` under
  ``no_grad`` on (2B, 1, roi³), zero_grad, gradient clipping (when configured) and ``optimizer.step``.

Full and floor repeats are interleaved (ABBA…) so machine noise hits both equally; then every piece
of ASA's own work (data fetch, pretext, heads + losses, EMA update) is timed in isolation with its
own repeats. One JSON object goes to stdout (and to ``--out``).

    python bench/pretrain_step.py --preset cpu-demo --batch-size 2 --repeats 7 --out results.json
    python bench/pretrain_step.py --preset paper --device cuda --batch-size 2 --out paper_gpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonout import emit_json

from models.asa import losses, pretext
from models.asa.data import PretrainViews, collate, step_items
from models.asa.model import ASA
from models.asa.trainer import build_optimizer
from models.config import PRESETS, SUBVOLUME, PretrainConfig, build_config
from models.data.cache import cached_volume
from models.data.phantom import write_phantom_dataset
from models.data.transforms import intensity_jitter, make_view

GOAL = 0.15  # product goal: ASA's own work adds less than 15 % to the compute floor
NOISY_SPREAD = 1.2  # p90/p10 above this: other load on the machine; trust overhead_min / the paired figure


# -- timing helpers --------------------------------------------------------------------------------
class Clock:
    """Wall clock that synchronises the device before every reading (CUDA launches are async)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def time(self, fn: Callable[[], Any]) -> float:
        t0 = self.now()
        fn()
        return self.now() - t0


def summary(times: list[float]) -> dict[str, Any]:
    a = np.asarray(times, dtype=np.float64)
    return {
        "median_s": float(np.median(a)),
        "p10_s": float(np.percentile(a, 10)),
        "p90_s": float(np.percentile(a, 90)),
        "min_s": float(a.min()),
        "n": len(times),
        "all_s": [round(float(t), 6) for t in a],
    }


def peak_rss_mib() -> float:
    """Process-wide peak resident set size so far (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# -- the benchmark ---------------------------------------------------------------------------------
class Bench:
    def __init__(self, cfg: PretrainConfig, device: torch.device, cache_dir: Path, n_cases: int) -> None:
        self.cfg, self.device, self.clock = cfg, device, Clock(device)
        work = cache_dir / "phantoms"
        write_phantom_dataset(work, n=n_cases, seed=0)
        images = sorted((work / "imagesTr").glob("*.nii.gz"))
        self.cached = [cached_volume(p, cfg.data, cache_dir / "cache") for p in images]
        self.views = PretrainViews(self.cached, cfg)
        torch.manual_seed(cfg.seed)
        self.model = ASA(cfg).to(device).train()
        self.optimizer = build_optimizer(self.model, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.optim.lr
        self.params = [p for p in self.model.student.parameters() if p.requires_grad]
        self.momentum = cfg.optim.ema_start
        self.step = 0
        b, roi = cfg.batch_size, cfg.data.roi
        g = torch.Generator().manual_seed(123)
        self.x1 = torch.rand(b, 1, roi, roi, roi, generator=g).to(device)  # floor inputs
        self.x2 = torch.rand(2 * b, 1, roi, roi, roi, generator=g).to(device)

    # -- pieces of the trainer's step ------------------------------------------------------------
    def items(self, phase: int) -> list[tuple[int, int, int]]:
        """The trainer's batch for the next step, forced to ``phase`` (seeds differ every call)."""
        self.step += 1
        return [(case, seed, phase) for case, seed, _ in step_items(self.cfg, len(self.cached), self.step)]

    def fetch(self, phase: int) -> torch.Tensor:
        batch = collate([self.views[item] for item in self.items(phase)])  # DataLoader, num_workers=0
        return batch.to(self.device, non_blocking=True)

    def optimise(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        self.optimizer.step()

    def full_step(self, phase: int) -> None:
        x = self.fetch(phase)
        generator = torch.Generator().manual_seed(self.step)
        loss, stats = (self.model.phase1 if phase == 1 else self.model.phase2)(x, generator)
        if not np.isfinite(stats["loss"]):
            raise FloatingPointError(f"non-finite loss in phase {phase}: {stats}")
        self.optimise(loss)
        self.model.update_teacher(self.momentum)

    def floor_step(self, phase: int) -> None:
        m = self.model
        with m._autocast(self.device):
            if phase == 1:
                out = m.student(self.x1)
                loss = out.recon.float().mean() + out.tokens.float().mean()
                with torch.no_grad():
                    m.teacher.encode(self.x1)
            else:
                loss = m.student.encode(self.x2).tokens.float().mean()
                with torch.no_grad():
                    m.teacher.encode(self.x2)
        self.optimise(loss)

    # -- ASA's own work, piece by piece ----------------------------------------------------------
    def pieces(self, phase: int) -> dict[str, Callable[[], Any]]:
        """Closures that each run one piece of ASA's own work on realistic inputs."""
        cfg, m, dev = self.cfg, self.model, self.device
        b, roi, grid = cfg.batch_size, cfg.data.roi, cfg.data.grid
        n = grid**3
        w = cfg.loss
        x = self.fetch(phase)
        with torch.no_grad(), m._autocast(dev):
            if phase == 1:
                out = m.student(x)
                t_tok = m.teacher.encode(x).tokens
            else:
                crops = x[:, :, :roi, :roi, :roi].repeat(2, 1, 1, 1, 1)
                out = m.student.encode(crops)
                t_tok = m.teacher.encode(crops).tokens

        def ema() -> None:
            m.update_teacher(self.momentum)

        if phase == 1:
            g3 = (grid, grid, grid)

            def pretext_work() -> None:
                g = torch.Generator().manual_seed(self.step)
                perm = pretext.random_permutations(b, n, g).to(dev)
                pretext.shuffle_subvolumes(x, perm)
                pretext.order_targets(perm, g3)

            perm = pretext.random_permutations(b, n, torch.Generator().manual_seed(0)).to(dev)
            target = pretext.order_targets(perm, g3)

            def heads_losses() -> None:
                """Order head, global projectors, the three losses, their backward (to the tokens) and metrics."""
                tok = out.tokens.detach().requires_grad_(True)
                recon = out.recon.detach().requires_grad_(True)
                with m._autocast(dev):
                    pred = m.student.predict_order(tok)
                    s_global = m.student.global_embedding(tok)
                    with torch.no_grad():
                        t_global = m.teacher.global_embedding(t_tok)
                l_vop = losses.order_loss(pred, target)
                l_var = losses.recovery_loss(recon, x)
                l_global = losses.global_loss(s_global, t_global)
                loss = w.vop * l_vop + w.var * l_var + w.global1 * l_global
                loss.backward()
                _ = [loss.item(), l_vop.item(), l_var.item(), l_global.item()]
                pretext.order_error_voxels(pred.detach(), perm, g3).item()

        else:
            max_shift = (x.shape[2] - roi) // SUBVOLUME

            def pretext_work() -> None:
                g = torch.Generator().manual_seed(self.step)
                offsets = pretext.random_crop_offsets(b, max_shift, g)
                c1, c2 = pretext.crop_pair(x, offsets, roi)
                torch.cat([c1, c2])
                [pretext.matching_tokens(offsets[i], grid) for i in range(b)]

            offsets = pretext.random_crop_offsets(b, max_shift, torch.Generator().manual_seed(0))
            pairs = [pretext.matching_tokens(offsets[i], grid) for i in range(b)]
            swapped = [(j, i) for i, j in pairs]

            def heads_losses() -> None:
                """Global and local projectors (student and teacher), both losses, their backward and metrics."""
                tok = out.tokens.detach().requires_grad_(True)
                with m._autocast(dev):
                    s_global = m.student.global_embedding(tok)
                    s_local = m.student.local_embedding(tok)
                    with torch.no_grad():
                        t_global = m.teacher.global_embedding(t_tok)
                        t_local = m.teacher.local_embedding(t_tok)
                l_global = losses.global_loss(s_global[:b], t_global[b:]) + losses.global_loss(
                    s_global[b:], t_global[:b]
                )
                l_local = 0.5 * (
                    losses.local_loss(s_local[:b], t_local[b:], pairs)
                    + losses.local_loss(s_local[b:], t_local[:b], swapped)
                )
                loss = w.global2 * l_global + w.local * l_local
                loss.backward()
                _ = [loss.item(), l_global.item(), l_local.item()]

        return {
            "data_fetch": lambda: self.fetch(phase),
            "pretext": pretext_work,
            "heads_and_losses": heads_losses,
            "ema_update": ema,
        }

    def data_parts(self, phase: int) -> dict[str, Callable[[], Any]]:
        """The parts of ``data_fetch`` (already counted in it): read + float16→float32, view, collate."""
        cfg = self.cfg
        items = self.items(phase)
        size = cfg.data.roi if phase == 1 else cfg.data.phase2_size
        volumes = [self.views.load(case) for case, _, _ in items]
        samples = [self.views[item] for item in items]

        def view() -> None:
            for vol, (_, seed, _) in zip(volumes, items, strict=True):
                rng = np.random.default_rng(seed)
                intensity_jitter(make_view(vol, size, cfg.data.view, rng), cfg.data.intensity_aug, rng)

        return {
            "read_to_float32": lambda: [self.views.load(case) for case, _, _ in items],
            "view": view,
            "collate_to_device": lambda: collate(samples).to(self.device, non_blocking=True),
        }

    # -- measurement -------------------------------------------------------------------------------
    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return peak_rss_mib()

    def run_phase(self, phase: int, repeats: int, warmup: int, piece_repeats: int) -> dict[str, Any]:
        full_t: list[float] = []
        floor_t: list[float] = []
        peaks = {"full": 0.0, "floor": 0.0}
        pair = (("full", self.full_step, full_t), ("floor", self.floor_step, floor_t))
        for r in range(warmup + repeats):  # interleaved, order alternating per repeat (ABBA...): drift cancels
            for kind, fn, sink in pair if r % 2 == 0 else pair[::-1]:
                self.reset_peak()
                t = self.clock.time(lambda fn=fn: fn(phase))
                peaks[kind] = max(peaks[kind], self.peak())
                if r >= warmup:
                    sink.append(t)
        full, floor = summary(full_t), summary(floor_t)
        # per-repeat ratio too: each pair ran back to back, so it is the least noisy estimate
        ratios = [a / b - 1 for a, b in zip(full_t, floor_t, strict=True)]

        def measure(pieces: dict[str, Callable[[], Any]]) -> dict[str, Any]:
            out = {}
            for name, fn in pieces.items():
                for _ in range(warmup):
                    fn()
                out[name] = summary([self.clock.time(fn) for _ in range(piece_repeats)])
            return out

        breakdown = measure(self.pieces(phase))
        own = sum(v["median_s"] for v in breakdown.values())
        breakdown["data_fetch_parts"] = measure(self.data_parts(phase))
        return {
            "full": full,
            "floor": floor,
            "overhead": full["median_s"] / floor["median_s"] - 1,
            "overhead_paired_median": float(np.median(ratios)),
            "overhead_min": full["min_s"] / floor["min_s"] - 1,
            "noisy": max(v["p90_s"] / v["p10_s"] for v in (full, floor)) > NOISY_SPREAD,
            "within_goal": full["median_s"] / floor["median_s"] - 1 < GOAL,
            "asa_own_work": {
                **breakdown,
                "sum_of_medians_s": own,
                "sum_over_floor": own / floor["median_s"],
                "full_minus_floor_s": full["median_s"] - floor["median_s"],
            },
            "peak_memory_mib": peaks,
            "peak_memory_kind": (
                "torch.cuda.max_memory_allocated per step (max over repeats)"
                if self.device.type == "cuda"
                else "process peak RSS (ru_maxrss) so far: monotonic over the whole run"
            ),
        }


def _versions() -> dict[str, Any]:
    import monai

    return {"torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS))
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7, help="timed full/floor pairs per phase")
    ap.add_argument("--warmup", type=int, default=2, help="untimed pairs per phase first")
    ap.add_argument("--piece-repeats", type=int, default=None, help="repeats per breakdown piece (default 3x)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--cases", type=int, default=4, help="phantom scans in the on-disk cache")
    ap.add_argument("--phases", default="1,2", help="which phases to time")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    cfg = build_config(args.preset, overrides=args.overrides, batch_size=args.batch_size)
    piece_repeats = args.piece_repeats or 3 * args.repeats

    result: dict[str, Any] = {
        "benchmark": "asa_pretrain_step",
        "goal": f"ASA's own work adds < {GOAL:.0%} to the compute floor (overhead = median_full / median_floor - 1)",
        "config": {
            "preset": cfg.preset,
            "overrides": args.overrides,
            "roi": cfg.data.roi,
            "phase2_size": cfg.data.phase2_size,
            "feature_size": cfg.network.feature_size,
            "batch_size": cfg.batch_size,
            "precision": cfg.precision,
            "optimizer": cfg.optim.name,
            "grad_clip": cfg.optim.grad_clip,
            "use_checkpoint": cfg.network.use_checkpoint,
            "fused_attention": cfg.network.fused_attention,
            "view": cfg.data.view,
            "num_workers": cfg.data.num_workers,
            "cached_cases": args.cases,
        },
        "definitions": {
            "full": "trainer step: PretrainViews fetch from the float16 on-disk cache + collate + to(device), "
            "ASA.phaseN (pretext, heads, losses, .item() metrics), zero_grad, backward, grad clipping if set, "
            "optimizer.step, update_teacher",
            "floor_phase1": "student net(x) on (B,1,roi^3) + backward of recon.mean()+tokens.mean(), teacher "
            "encode no_grad on (B,1,roi^3), zero_grad, grad clipping if set, optimizer.step",
            "floor_phase2": "student encode on (2B,1,roi^3) + backward of tokens.mean(), teacher encode no_grad "
            "on (2B,1,roi^3), zero_grad, grad clipping if set, optimizer.step",
            "floor_includes_optimizer_step": True,
            "floor_includes_grad_clip": bool(cfg.optim.grad_clip),
            "asa_own_work": "each piece timed alone: data_fetch (items -> PretrainViews -> collate -> device), "
            "pretext (phase 1: permutation + shuffle + order targets; phase 2: offsets + crop_pair + cat + "
            "matching_tokens), heads_and_losses (heads/projectors fwd, losses, their backward to detached "
            "tokens, .item() metrics), ema_update (update_teacher)",
            "interleaving": "per repeat one full and one floor step, order alternating (full,floor,floor,full,...)",
            "overhead_paired_median": "median over repeats of full/floor - 1 of the two back-to-back steps",
            "overhead_min": "min_full / min_floor - 1: the least disturbed repeat of each (robust under contention)",
            "noisy": f"p90/p10 of full or floor above {NOISY_SPREAD}: the machine was contended, medians are suspect",
        },
        "environment": {
            **_versions(),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "repeats": args.repeats,
            "warmup": args.warmup,
            "piece_repeats": piece_repeats,
            "cpu_count": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
        },
        "phases": {},
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="asa-bench-") as tmp:
        bench = Bench(cfg, device, Path(tmp), args.cases)
        result["setup_s"] = time.perf_counter() - t_start
        for phase in (int(p) for p in args.phases.split(",")):
            result["phases"][f"phase{phase}"] = bench.run_phase(phase, args.repeats, args.warmup, piece_repeats)
    result["total_s"] = time.perf_counter() - t_start
    result["environment"]["loadavg_end"] = os.getloadavg()
    result["summary"] = {
        name: {
            "full_median_s": round(r["full"]["median_s"], 4),
            "floor_median_s": round(r["floor"]["median_s"], 4),
            "overhead": round(r["overhead"], 4),
            "overhead_paired_median": round(r["overhead_paired_median"], 4),
            "overhead_min": round(r["overhead_min"], 4),
            "noisy": r["noisy"],
            "within_goal": r["within_goal"],
        }
        for name, r in result["phases"].items()
    }
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
