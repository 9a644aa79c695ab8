"""Training-loop pieces shared by ASA pretraining and finetuning.

Why one module: both loops run the same on one CPU, one GPU or N processes under ``torchrun``, stop
cleanly on SIGTERM / Ctrl-C with a checkpoint, resume bit for bit and log the same way. Only what
each loop computes per step differs, so process groups, gradient averaging, the stop flag,
deterministic kernels, atomic checkpoint files and the metrics log live here once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


# -- distributed helpers ---------------------------------------------------------------------------
@dataclass
class Dist:
    """This process's place in the job (rank 0 of 1 without ``torchrun``)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: str | None = None) -> Dist:
    """Join the process group ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in (None, "cuda")
    dev = torch.device(f"cuda:{local}" if use_cuda else (device or "cpu"))
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world=world, device=dev)


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """One flat all-reduce of every gradient this step produced (same set on every rank)."""
    grads = [p.grad for p in params if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def stop_requested(local: bool, ctx: Dist) -> bool:
    """True on every rank when any rank was asked to stop: a signal reaches one process of a torchrun
    job first, and a rank that left the loop alone would leave the others waiting in an all-reduce."""
    if ctx.world == 1:
        return local
    flag = torch.tensor([float(local)], device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """A seed that is a pure function of (run seed, step, salt): what makes resumed runs exact."""
    return int(np.random.SeedSequence([seed, step, salt]).generate_state(1)[0])


# -- determinism and signals -----------------------------------------------------------------------
@contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the training loop, restored after it (a worker process lives on).

    Without them the CPU backward of Swin's relative-position-bias lookup accumulates floats from
    several threads in any order, so the last bits of a few gradients vary from run to run.
    """
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


class StopFlag:
    """Set by SIGTERM / SIGINT so the loop can finish its step and checkpoint."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside some workers): no handler
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("signal %s: stopping after this step with a checkpoint", signum)
        self.stop = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


_StopFlag = StopFlag  # the name the pretraining loop has always used


# -- checkpoints -----------------------------------------------------------------------------------
def atomic_save(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a temporary file and a rename: a kill never leaves half a checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(
    run_or_file: Path, name: str = "checkpoint.pt", what: str = "ASA", map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """The checkpoint dict of a run directory (its ``name`` file) or of a checkpoint file."""
    run_or_file = Path(run_or_file)
    path = run_or_file / name if run_or_file.is_dir() else run_or_file
    if not path.exists():
        raise FileNotFoundError(f"no {what} checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=False)


# -- logs ------------------------------------------------------------------------------------------
def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records written after the checkpoint's step so the log reads like one run."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


class MetricsLog:
    """``metrics.jsonl`` plus the same scalars as TensorBoard events; a no-op on ranks other than 0.

    Opening it with ``start`` (the resumed step) truncates both logs to that step first.
    """

    def __init__(self, out: Path, start: int, enabled: bool = True) -> None:
        self._file: IO[str] | None = None
        self._writer: Any = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(out / "tensorboard"), purge_step=start)
        truncate_metrics(out / "metrics.jsonl", start)
        self._file = (out / "metrics.jsonl").open("a")

    def write(self, record: dict[str, Any]) -> None:
        """One JSON line; numbers also go to TensorBoard (``train/<key>`` unless the key has a prefix)."""
        if self._file is None:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for k, v in record.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "step":
                self._writer.add_scalar(k if "/" in k else f"train/{k}", v, record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._writer.close()
            self._file = None


__all__ = [
    "Dist",
    "MetricsLog",
    "StopFlag",
    "_StopFlag",
    "atomic_save",
    "average_gradients",
    "deterministic_kernels",
    "init_distributed",
    "load_checkpoint",
    "step_seed",
    "stop_requested",
    "truncate_metrics",
]
