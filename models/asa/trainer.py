"""ASA pretraining loop: data → student/teacher → optimiser → schedules → resume → steps.

Runs the same on one CPU, one GPU, or N processes under ``torchrun`` (gloo on CPU, NCCL on GPU).
Gradients are averaged with one all-reduce per step instead of DDP, because the two phases use
different parts of the network (DDP would need ``find_unused_parameters`` and one forward per
backward, while phase 2 runs the student on two views).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

import models
from models.asa import pretext
from models.asa.data import PretrainViews, StepSampler, collate, phase_of_step, step_seed, steps_per_pass, total_steps
from models.asa.model import ASA
from models.asa.report import plot_curves
from models.asa.schedules import ema_momentum, warmup_cosine
from models.config import PretrainConfig, save_config
from models.data.cache import cached_volume
from models.training import (  # also importable from here, as before the move
    Dist,
    _StopFlag,
    average_gradients,
    deterministic_kernels,
    init_distributed,
    stop_requested,
)
from models.training import load_checkpoint as _load_checkpoint
from models.training import truncate_metrics as _truncate_metrics

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


# -- checkpoints -----------------------------------------------------------------------------------
def save_checkpoint(
    path: Path, model: ASA, optimizer: torch.optim.Optimizer, step: int, total: int, cfg: PretrainConfig
) -> None:
    """Everything needed to continue exactly, written atomically (a kill never leaves half a file)."""
    state = {
        "student": model.student.state_dict(),
        "teacher": model.teacher.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "total_steps": total,
        "config": cfg.model_dump(mode="json"),
        "version": models.__version__,
        "torch": torch.__version__,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(run_or_file: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return _load_checkpoint(run_or_file, CHECKPOINT, "ASA", map_location)


# -- the run ---------------------------------------------------------------------------------------
def _prepare_data(cases: list[Any], cfg: PretrainConfig, cache_dir: Path, ctx: Dist, show: bool) -> list[Path]:
    """Preprocess every scan once (main process); the other processes wait, then reuse the cache."""
    from tqdm.auto import tqdm

    paths: list[Path] = []
    if ctx.main:
        paths = [cached_volume(c.image, cfg.data, cache_dir) for c in tqdm(cases, "preprocessing", disable=not show)]
    ctx.barrier()
    if not ctx.main:
        paths = [cached_volume(c.image, cfg.data, cache_dir) for c in cases]
    return paths


@torch.no_grad()
def evaluate_order(model: ASA, volumes: list[torch.Tensor], cfg: PretrainConfig, seed: int = 1234) -> dict[str, float]:
    """Held-out phase-1 figures for the teacher and the student: order error in voxels, recovery MSE."""
    grid = (cfg.data.grid,) * 3
    out: dict[str, float] = {"baseline_order_error_vox": pretext.mean_position_error_voxels(grid)}
    for name, net in (("teacher", model.teacher), ("student", model.student)):
        was_training = net.training
        net.eval()
        g = torch.Generator().manual_seed(seed)
        errors, axes, recs = [], [], []
        for x in volumes:
            x = x[None].to(next(net.parameters()).device)
            perm = pretext.random_permutations(1, grid[0] ** 3, g).to(x.device)
            res = net(pretext.shuffle_subvolumes(x, perm))
            pred = net.predict_order(res.tokens)
            errors.append(pretext.order_error_voxels(pred, perm, grid).item())
            axes.append(pretext.order_error_per_axis_voxels(pred, perm, grid).tolist())
            recs.append(torch.mean((res.recon.float() - x) ** 2).item())
        net.train(was_training)
        out[f"{name}_order_error_vox"] = float(np.mean(errors)) if errors else math.nan
        for axis, value in zip("xyz", np.mean(axes, axis=0) if axes else [math.nan] * 3, strict=True):
            out[f"{name}_order_error_{axis}_vox"] = float(value)  # RAS array axes: x left-right, z along the body
        out[f"{name}_recovery_mse"] = float(np.mean(recs)) if recs else math.nan
    return out


def build_optimizer(model: ASA, cfg: PretrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.student.parameters() if p.requires_grad]
    if cfg.optim.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    return torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)


def pretrain(
    cfg: PretrainConfig,
    train_cases: list[Any],
    out: Path,
    *,
    holdout_cases: list[Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Run (or continue) ASA pretraining into ``out``; returns the final held-out figures.

    ``stop_at`` ends this session after that global step with a checkpoint, exactly as an interruption
    would (the schedules still span the whole run), so ``resume=True`` can continue it.
    """
    from tqdm.auto import tqdm

    ctx = init_distributed(device)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT

    # ---- resume or start ----
    state: dict[str, Any] | None = None
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        saved = PretrainConfig.model_validate(state["config"])
        cfg = saved.model_copy(update={"steps": cfg.steps or saved.steps})
    elif resume:
        raise FileNotFoundError(f"--resume: no checkpoint in {out}")
    if ctx.main:
        save_config(cfg, out / "config.yaml")

    # ---- data ----
    cache_dir = cfg.data.cache_dir or out / "cache"

    cached = _prepare_data(train_cases, cfg, cache_dir, ctx, progress)
    held = _prepare_data(holdout_cases or [], cfg, cache_dir, ctx, progress)
    views = PretrainViews(cached, cfg)
    held_views = [PretrainViews(held, cfg)[(i, 0, 1)] for i in range(len(held))]
    total = total_steps(cfg, len(cached))
    per_pass = steps_per_pass(len(cached), cfg.batch_size)

    # ---- model, optimiser, schedules ----
    torch.manual_seed(cfg.seed)
    model = ASA(cfg).to(ctx.device).train()
    optimizer = build_optimizer(model, cfg)
    lr = warmup_cosine(cfg.optim.lr, 0.0, total, round(cfg.optim.warmup_epochs * per_pass))
    momentum = ema_momentum(cfg.optim.ema_start, total)
    start = 0
    if state is not None:
        model.student.load_state_dict(state["student"])
        model.teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    params = [p for p in model.student.parameters() if p.requires_grad]

    loader = DataLoader(
        views,
        batch_sampler=StepSampler(cfg, len(cached), start, min(total, stop_at or total), ctx.rank, ctx.world),
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        persistent_workers=False,
    )
    writer = None
    if ctx.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"), purge_step=start)
    metrics_file = None
    if ctx.main:
        _truncate_metrics(out / "metrics.jsonl", start)
        metrics_file = (out / "metrics.jsonl").open("a")

    def log_record(record: dict[str, Any]) -> None:
        if metrics_file is None:
            return
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        if writer is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    writer.add_scalar(k if k.startswith("eval/") else f"train/{k}", v, record["step"])

    step = start
    final_eval: dict[str, Any] = {}
    bar_steps = tqdm(total=total, initial=start, desc="ASA pretraining", disable=not (progress and ctx.main))
    try:
        with _StopFlag() as flag, deterministic_kernels(cfg.deterministic):
            for batch in loader:
                t0 = time.perf_counter()
                phase = phase_of_step(step, per_pass, cfg.alternate)
                torch.manual_seed(step_seed(cfg.seed, step, 10_000 + ctx.rank))  # drop-path: resumable
                generator = torch.Generator().manual_seed(step_seed(cfg.seed, step, 20_000 + ctx.rank))
                for group in optimizer.param_groups:
                    group["lr"] = float(lr[step])
                x = batch.to(ctx.device, non_blocking=True)
                loss, stats = (model.phase1 if phase == 1 else model.phase2)(x, generator)
                if not math.isfinite(stats["loss"]):
                    raise FloatingPointError(f"non-finite loss at step {step + 1} (phase {phase}): {stats}")
                optimizer.zero_grad(set_to_none=True)  # phase 2 leaves decoder grads None: SGD skips them
                loss.backward()
                average_gradients(params, ctx.world)
                if cfg.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                optimizer.step()
                model.update_teacher(float(momentum[step]))
                step += 1
                elapsed = time.perf_counter() - t0
                record = {
                    "step": step,
                    "phase": phase,
                    **stats,
                    "lr": float(lr[step - 1]),
                    "ema_momentum": float(momentum[step - 1]),
                    "samples_per_s": cfg.batch_size / max(elapsed, 1e-9),
                    "time": time.time(),
                }
                if step % cfg.log_every == 0 or step == total:
                    log_record(record)
                bar_steps.update(1)
                bar_steps.set_postfix(phase=phase, loss=f"{stats['loss']:.4f}")
                if ctx.main and held_views and cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                    log_record(
                        {"step": step, **{f"eval/{k}": v for k, v in evaluate_order(model, held_views, cfg).items()}}
                    )
                stopping = stop_requested(flag.stop, ctx)  # one decision for all ranks, read once
                if ctx.main and (step % cfg.checkpoint_every == 0 or step in (total, stop_at) or stopping):
                    save_checkpoint(ckpt_path, model, optimizer, step, total, cfg)
                if stopping:
                    break
    finally:
        bar_steps.close()
    if ctx.main and step == total and held_views:
        final_eval = evaluate_order(model, held_views, cfg)
        log_record({"step": step, **{f"eval/{k}": v for k, v in final_eval.items()}})
        (out / "eval.json").write_text(json.dumps(final_eval, indent=2))
    if metrics_file is not None:
        metrics_file.close()
        plot_curves(out / "metrics.jsonl", out / "loss_curves.png")
    if writer is not None:
        writer.close()
    if ctx.world > 1:
        _check_in_sync(model, ctx, out)
    ctx.barrier()
    return {"step": step, "total_steps": total, "completed": step == total, **final_eval}


def _check_in_sync(model: ASA, ctx: Dist, out: Path) -> None:
    """Every process must end with the same weights; record each rank's checksum to prove it."""
    local = torch.stack([sum(p.double().sum() for p in net.parameters()) for net in (model.student, model.teacher)])
    gathered = [torch.zeros_like(local) for _ in range(ctx.world)]
    dist.all_gather(gathered, local)
    sums = [g.tolist() for g in gathered]
    if ctx.main:
        (out / "ranks.json").write_text(json.dumps({"world_size": ctx.world, "checksums": sums}, indent=2))
    if any(s != sums[0] for s in sums):
        raise RuntimeError(f"processes diverged: parameter checksums {sums}")
