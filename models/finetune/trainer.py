"""The finetuning loop: data → network (+ transferred ASA weights) → optimiser → schedule → resume → steps.

Like pretraining it runs the same on one CPU, one GPU or N ``torchrun`` processes (gloo on CPU, one
gradient all-reduce per step), stops on SIGTERM / Ctrl-C with a checkpoint, and resumes bit for bit
(every random draw is a function of the run seed and the step). What it adds: sliding-window
validation every ``eval.every`` steps and a model directory (``model.json`` + ``model.pt``, see
:mod:`models.modeldir`) rewritten whenever the mean validation Dice improves, so the run directory is
always a usable model.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import monai
import torch
import torch.distributed as dist
from monai.losses import DiceCELoss
from monai.networks.nets import SwinUNETR
from torch.utils.data import DataLoader

import models
from models.asa.schedules import warmup_cosine
from models.config import save_config
from models.data.datasets import Case
from models.finetune.config import FinetuneConfig, FinetuneDataConfig
from models.finetune.data import (
    PairStore,
    StepSampler,
    TrainCrops,
    cached_pair,
    coarse_data_config,
    collate,
    contrast_offsets,
)
from models.finetune.evaluate import evaluate
from models.finetune.labels import source_label_names
from models.finetune.transfer import TransferReport, load_teacher_state, random_init_report, transfer_weights
from models.modeldir import LabelInfo, ModelSpec, Preprocessing, SegNetwork, save_model
from models.training import (
    Dist,
    MetricsLog,
    StopFlag,
    atomic_save,
    average_gradients,
    deterministic_kernels,
    init_distributed,
    load_checkpoint,
    step_seed,
    stop_requested,
)

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
TRANSFER_FILE = "transfer.json"


def load_finetune_checkpoint(run_or_file: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return load_checkpoint(run_or_file, CHECKPOINT, "finetuning", map_location)


def build_network(cfg: FinetuneConfig, n_labels: int) -> SwinUNETR:
    """The segmentation network: the same layout as pretraining's backbone, one output per label."""
    net = cfg.network
    return SwinUNETR(
        in_channels=1,
        out_channels=n_labels,
        feature_size=net.feature_size,
        depths=net.depths,
        num_heads=net.num_heads,
        dropout_path_rate=net.drop_path,
        use_checkpoint=net.use_checkpoint,
        use_flash_attention=net.fused_attention,  # MONAI applies it only with gradients off (validation)
    )


def initialise(net: SwinUNETR, cfg: FinetuneConfig) -> TransferReport:
    """Load the ASA teacher into ``net`` (or leave it random for ``pretrained: none``)."""
    if cfg.pretrained == "none":
        return random_init_report(net)
    teacher, _ = load_teacher_state(Path(cfg.pretrained))
    return transfer_weights(net, teacher, cfg.transfer, cfg.pretrained)


def model_spec(
    cfg: FinetuneConfig, labels: dict[int, LabelInfo], provenance: dict[str, Any], metrics: dict[str, Any]
) -> ModelSpec:
    return ModelSpec(
        labels=labels,
        network=SegNetwork(
            feature_size=cfg.network.feature_size, depths=cfg.network.depths, num_heads=cfg.network.num_heads
        ),
        preprocessing=Preprocessing(
            spacing=cfg.data.spacing, hu_min=cfg.data.hu_min, hu_max=cfg.data.hu_max, roi=(cfg.data.roi,) * 3,
            trained_fast=cfg.data.coarse_prob > 0,
        ),
        provenance=provenance,
        metrics=metrics,
    )


def _prepare(
    cases: list[Case], data: FinetuneDataConfig, mapping: dict[int, int] | None, names: dict[int, str],
    n_labels: int, cache_dir: Path, ctx: Dist, show: bool, what: str,
) -> list[tuple[Path, Path]]:  # fmt: skip
    """Preprocess every case once (main process first; the others then find the cache filled)."""
    from tqdm.auto import tqdm

    entries: list[tuple[Path, Path]] = []
    if ctx.main:
        bar = tqdm(cases, f"preprocessing {what}", disable=not show)
        entries = [cached_pair(c, data, mapping, n_labels, cache_dir, names) for c in bar]
    ctx.barrier()
    if not ctx.main:
        entries = [cached_pair(c, data, mapping, n_labels, cache_dir, names) for c in cases]
    return entries


Entries = list[tuple[Path, Path]]


def _stores(
    train: Entries, val: Entries, coarse: Entries | None, budget_mb: float
) -> tuple[PairStore, PairStore, PairStore | None]:
    """Training (fine and coarse) and validation data share one RAM budget: all in RAM, or all memory-mapped."""
    nbytes = sum(p.stat().st_size for pair in train + val + (coarse or []) for p in pair)
    budget = budget_mb if nbytes <= budget_mb * 2**20 else 0.0
    return PairStore(train, budget), PairStore(val, budget), PairStore(coarse, budget) if coarse is not None else None


def _labels_of(raw: dict[Any, Any]) -> dict[int, LabelInfo]:
    return {int(k): LabelInfo.model_validate(v) for k, v in raw.items()}


def finetune(
    cfg: FinetuneConfig,
    train_cases: list[Case],
    val_cases: list[Case],
    out: Path,
    *,
    labels: dict[int, LabelInfo],
    mapping: dict[int, int] | None = None,
    dataset_labels: dict[int, str] | None = None,
    provenance: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Run (or continue) finetuning into ``out``; returns the step reached and the best validation figures.

    ``dataset_labels`` (the dataset's label id -> name) names the segments and ROIs of DICOM-SEG
    and RTSTRUCT labels.
    ``stop_at`` ends this session after that global step with a checkpoint, exactly as an interruption
    would (the schedule still spans the whole run), so ``resume=True`` can continue it.
    """
    from tqdm.auto import tqdm

    ctx = init_distributed(device)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT

    # ---- resume or start ----
    state: dict[str, Any] | None = None
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {out}")
        state = load_finetune_checkpoint(ckpt_path)
        saved = FinetuneConfig.model_validate(state["config"])
        cfg = saved.model_copy(update={"steps": cfg.steps})  # the caller may lengthen the run, nothing else
        labels = _labels_of(state["labels"])
        mapping = {int(k): int(v) for k, v in state["label_map"].items()} if state.get("label_map") else None
    if ctx.main:
        save_config(cfg, out / "config.yaml")
    n_labels = len(labels)
    organ_names = {i: info.name for i, info in labels.items() if i != 0}
    names = source_label_names(dataset_labels or {}, mapping, organ_names)

    # ---- data ----
    cache_dir = cfg.data.cache_dir or out / "cache"
    train_store, val_store, coarse_store = _stores(
        _prepare(train_cases, cfg.data, mapping, names, n_labels, cache_dir, ctx, progress, "training cases"),
        _prepare(val_cases, cfg.data, mapping, names, n_labels, cache_dir, ctx, progress, "validation cases"),
        _prepare(train_cases, coarse_data_config(cfg.data), mapping, names, n_labels, cache_dir, ctx, progress,
                 "training cases at the fast spacing") if cfg.data.coarse_prob > 0 else None,
        cfg.data.cache_ram_mb,
    )
    if coarse_store is not None:
        log.info("multi-scale: %g%% of the volumes cropped at the fast spacing, %s mm",
                 100 * cfg.data.coarse_prob, " x ".join(f"{s:g}" for s in coarse_data_config(cfg.data).spacing))
    total = cfg.steps

    # ---- network, transfer, optimiser, schedule ----
    torch.manual_seed(cfg.seed)
    net = build_network(cfg, n_labels).to(ctx.device)
    if state is None:
        report = initialise(net, cfg)
        transfer = report.summary()
        if ctx.main:
            report.write(out / TRANSFER_FILE)
    else:
        net.load_state_dict(state["model"])
        transfer = state["transfer"]
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    lr = warmup_cosine(cfg.optim.lr, cfg.optim.min_lr, total, cfg.optim.warmup_steps)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=cfg.loss.dice, lambda_ce=cfg.loss.ce)
    start, best = 0, {"mean_dice": -math.inf}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        start, best = int(state["step"]), state["best"]

    provenance = {
        **(provenance or {}),
        "config": cfg.model_dump(mode="json"),
        "pretrained": cfg.pretrained,
        "transfer": transfer,
        "label_map": {str(k): v for k, v in mapping.items()} if mapping else None,
        "train_cases": [c.id for c in train_cases],
        "val_cases": [c.id for c in val_cases],
        "version": models.__version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
    }

    def checkpoint(step: int) -> None:
        atomic_save(
            {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "total_steps": total,
                "config": cfg.model_dump(mode="json"),
                "labels": {i: info.model_dump(mode="json") for i, info in labels.items()},
                "label_map": mapping,
                "transfer": transfer,
                "best": best,
                "version": models.__version__,
                "torch": torch.__version__,
            },
            ckpt_path,
        )

    def validate(step: int) -> dict[str, Any]:
        """Validate, log, and rewrite the model directory when the mean Dice improved."""
        nonlocal best
        res = evaluate(net, val_store, cfg, organ_names, ctx.device)
        figures = {"step": step, "mean_dice": res["mean_dice"], "dice": res["dice"], "val_cases": res["cases"]}
        metrics.write(
            {
                "step": step,
                "eval/mean_dice": res["mean_dice"],
                **{f"eval/dice/{k}": v for k, v in res["dice"].items() if v is not None},
            }
        )
        if math.isfinite(res["mean_dice"]) and res["mean_dice"] > best["mean_dice"]:
            best = figures
            save_model(out, net, model_spec(cfg, labels, provenance, {"best_mean_dice": res["mean_dice"], **figures}))
            (out / "eval.json").write_text(json.dumps({**figures, "per_case": res["per_case"]}, indent=2))
            log.info("step %d: mean Dice %.4f (best so far), model written to %s", step, res["mean_dice"], out)
        else:
            log.info("step %d: mean Dice %.4f (best %.4f)", step, res["mean_dice"], best["mean_dice"])
        return figures

    loader = DataLoader(
        TrainCrops(train_store, cfg.data, contrast_offsets(cfg.data, organ_names), coarse_store),
        batch_sampler=StepSampler(
            len(train_store), cfg.batch_size, cfg.seed, start, min(total, stop_at or total), ctx.rank, ctx.world
        ),
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        persistent_workers=False,
    )
    metrics = MetricsLog(out, start, enabled=ctx.main)
    autocast = (
        torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
    )
    step = start
    bar = tqdm(total=total, initial=start, desc="finetuning", disable=not (progress and ctx.main))
    try:
        with StopFlag() as flag, deterministic_kernels(cfg.deterministic):
            for images, targets in loader:
                t0 = time.perf_counter()
                torch.manual_seed(step_seed(cfg.seed, step, 10_000 + ctx.rank))  # drop-path: resumable
                for group in optimizer.param_groups:
                    group["lr"] = float(lr[step])
                images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
                with autocast:
                    logits = net(images)
                loss = loss_fn(logits.float(), targets)
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(f"non-finite loss at step {step + 1}: {value}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                average_gradients(params, ctx.world)
                record: dict[str, Any] = {"step": step + 1, "loss": value, "lr": float(lr[step])}
                if cfg.optim.grad_clip:
                    record["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip))
                optimizer.step()
                step += 1
                elapsed = time.perf_counter() - t0
                record["samples_per_s"] = cfg.batch_size * cfg.data.num_samples / max(elapsed, 1e-9)
                record["time"] = time.time()
                if step % cfg.log_every == 0 or step == total:
                    metrics.write(record)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", best=f"{best['mean_dice']:.3f}")
                if ctx.main and len(val_store) and (step == total or (cfg.eval.every and step % cfg.eval.every == 0)):
                    validate(step)
                stopping = stop_requested(flag.stop, ctx)  # one decision for all ranks, read once
                if ctx.main and (step % cfg.checkpoint_every == 0 or step in (total, stop_at) or stopping):
                    checkpoint(step)
                if stopping:
                    break
    finally:
        bar.close()
    if ctx.main and step == total and not len(val_store):
        # nothing to select on: the final weights are the model
        save_model(out, net, model_spec(cfg, labels, provenance, {"step": step, "val_cases": 0}))
    metrics.close()
    if ctx.world > 1:
        _check_in_sync(net, ctx, out)
    ctx.barrier()
    result: dict[str, Any] = {"step": step, "total_steps": total, "completed": step == total}
    if math.isfinite(best["mean_dice"]):
        result["best"] = best
    return result


def _check_in_sync(net: torch.nn.Module, ctx: Dist, out: Path) -> None:
    """Every process must end with the same weights; record each rank's checksum to prove it."""
    local = torch.stack([sum(p.double().sum() for p in net.parameters())])
    gathered = [torch.zeros_like(local) for _ in range(ctx.world)]
    dist.all_gather(gathered, local)
    sums = [g.tolist() for g in gathered]
    if ctx.main:
        (out / "ranks.json").write_text(json.dumps({"world_size": ctx.world, "checksums": sums}, indent=2))
    if any(s != sums[0] for s in sums):
        raise RuntimeError(f"processes diverged: parameter checksums {sums}")
