"""The one torch training loop: device, mixed precision, early stopping, checkpoints, progress and seeds.

Every torch model of PatentML (the paper's CNNs, the MLP head on sentence vectors, the fine-tuned
encoder) trains here; a backend says only how to batch its data, how to run its model on a batch and
how to score the validation split, as nanoGPT keeps the model beside one ``train.py``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from patentml.exceptions import ConfigError
from patentml.variants.base import EpochLog, FitContext

log = logging.getLogger(__name__)

#: A validation score must beat the best so far by this much to count as better (early stopping).
MIN_IMPROVEMENT = 1e-6
EARLY_STOP_METRICS = ("f1", "p_at_1", "loss")
LR_SCHEDULES = ("constant", "cosine", "onecycle", "linear")
OPTIMIZERS = ("adam", "adamw")

#: (model inputs, multi-hot targets (batch, labels)) of one training step.
Batch = tuple[Any, torch.Tensor]


def torch_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a device is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("PATENTML_DEVICE=cuda but no CUDA device is available")
    return torch.device(name)


@dataclass(frozen=True)
class LoopSettings:
    """How one model trains; backends fill it from their settings."""

    epochs: int
    lr: float
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    patience: int = 3
    early_stop_metric: str = "f1"
    #: ``best``: keep the epoch with the best validation score; ``last``: the last epoch.
    select: str = "best"
    #: Skip training batches smaller than this (BatchNorm cannot train on one example).
    min_batch: int = 1
    clip_grad_norm: float | None = None
    #: Write a resumable checkpoint after every epoch (into the run's work folder).
    checkpoint: bool = True
    #: Prefix of this stage's files and progress bars (two stages of one run must not share files).
    stage: str = ""

    def __post_init__(self) -> None:
        for name, value, allowed in (("early_stop_metric", self.early_stop_metric, EARLY_STOP_METRICS),
                                     ("lr_schedule", self.lr_schedule, LR_SCHEDULES),
                                     ("optimizer", self.optimizer, OPTIMIZERS), ("select", self.select, ("best", "last"))):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass
class LoopResult:
    best_score: float
    #: Whether some epoch beat ``initial_best`` (else the model keeps the weights it came with).
    improved: bool
    epochs_run: int


class TorchLoop:
    """Trains ``model`` with :meth:`run`; :meth:`autocast` is the mixed-precision context for the caller's own passes."""

    def __init__(self, model: nn.Module, settings: LoopSettings, ctx: FitContext) -> None:
        self.model, self.settings, self.ctx = model, settings, ctx
        self.device = torch_device(ctx.device)
        self.use_amp = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16

    def autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def _path(self, name: str) -> Path:
        return self.ctx.work_dir / f"{self.settings.stage}{name}"

    def _optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        s = self.settings
        cls = torch.optim.Adam if s.optimizer == "adam" else torch.optim.AdamW
        return cls(groups, lr=s.lr, weight_decay=s.weight_decay)

    def _scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        name, total = self.settings.lr_schedule, max(total_steps, 1)
        if name == "constant":
            return None
        if name == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        if name == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                       total_steps=total)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))

    def run(self, *, param_groups: list[dict[str, Any]], loss_fn: nn.Module,
            batches: Callable[[int], Iterable[Batch]], steps_per_epoch: int,
            forward: Callable[[Any], torch.Tensor], valid_scores: Callable[[], np.ndarray], y_valid: np.ndarray,
            first_epoch: int = 1, initial_best: float = -math.inf) -> LoopResult:
        """Train for up to ``settings.epochs`` epochs; ``batches(epoch)`` yields the epoch's batches (epoch from 0).

        After each epoch ``valid_scores()`` (run in eval mode without gradients) gives validation
        probabilities (n, labels) against ``y_valid`` (n, labels) bool; the best epoch's weights (or
        the last's) end in ``model``, on the CPU, in eval mode.
        """
        from tqdm import tqdm

        from patentml.metrics import at_k, choose_threshold

        s, ctx, model = self.settings, self.ctx, self.model
        model.to(self.device)
        torch.manual_seed(ctx.seed)
        optimizer = self._optimizer(param_groups)
        scheduler = self._scheduler(optimizer, s.epochs * steps_per_epoch)
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        ckpt_path, best_path = self._path("checkpoint.pt"), self._path("best.safetensors")
        start, best, bad, improved = 0, initial_best, 0, False
        if s.checkpoint and ctx.resume and ckpt_path.exists():
            state = torch.load(ckpt_path, map_location=self.device, weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
            start, best, bad = int(state["epoch"]), float(state["best_score"]), int(state["bad_epochs"])
            improved = bool(state.get("improved", best > initial_best))
            log.info("Resuming %sfrom %s at epoch %d (epochs 1-%d done)", s.stage, ckpt_path, start + 1, start)
        y_float = torch.from_numpy(y_valid.astype(np.float32))
        kept: dict[str, torch.Tensor] | None = None
        # A model that comes with a score to beat keeps its own weights unless an epoch beats it.
        initial = None if initial_best == -math.inf else {k: v.detach().cpu().clone()
                                                          for k, v in model.state_dict().items()}
        epoch = start
        for epoch in range(start, s.epochs):
            model.train()
            started, total, seen = time.perf_counter(), 0.0, 0
            bar = tqdm(batches(epoch), total=steps_per_epoch, desc=f"{s.stage}epoch {epoch + 1}/{s.epochs}",
                       unit=" batch", disable=not ctx.progress, mininterval=1)
            for inputs, y in bar:
                if len(y) < s.min_batch:
                    continue
                with self.autocast():
                    loss = loss_fn(forward(inputs).float(), y.to(self.device, non_blocking=True))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if s.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None:
                    scheduler.step()
                total += float(loss.detach()) * len(y)
                seen += len(y)
                bar.set_postfix(loss=f"{total / seen:.4f}", pps=f"{seen / (time.perf_counter() - started):.0f}")
            train_seconds = time.perf_counter() - started
            model.eval()
            with torch.no_grad():
                scores = valid_scores()
                valid_loss = float(loss_fn(torch.logit(torch.from_numpy(scores).clamp(1e-7, 1 - 1e-7)), y_float))
            f1 = choose_threshold(y_valid, scores, keep_top=True)[1] if len(y_valid) else 0.0
            p1 = at_k(y_valid, scores, ks=(1,))["p@1"] if len(y_valid) else 0.0
            score = {"f1": f1, "p_at_1": p1, "loss": -valid_loss}[s.early_stop_metric]
            written: list[Path] = []
            if score > best + MIN_IMPROVEMENT or s.select == "last":
                best, bad, improved = score, 0, True
                kept = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                if s.checkpoint:
                    from patentml.artifact import save_arrays

                    save_arrays(best_path, {k: v.numpy() for k, v in kept.items()})
                    written.append(best_path)
            else:
                bad += 1
            if s.checkpoint:
                _atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                                    "epoch": epoch + 1, "best_score": best, "bad_epochs": bad, "improved": improved},
                                   ckpt_path)
            ctx.on_epoch(EpochLog(first_epoch + epoch, total / max(seen, 1), valid_loss, f1, p1,
                                  time.perf_counter() - started, seen / max(train_seconds, 1e-9)))
            if s.checkpoint:
                # After the epoch's row: a stored checkpoint never runs ahead of run_epochs (a resume
                # repeats at most the one epoch whose checkpoint did not reach the store, and upserts its row).
                ctx.on_checkpoint(written + [ckpt_path])
            log.info("%sepoch %d: train loss %.4f, valid loss %.4f, valid F1 %.4f, P@1 %.4f (%.0f s)", s.stage,
                     epoch + 1, total / max(seen, 1), valid_loss, f1, p1, time.perf_counter() - started)
            if bad >= s.patience:
                log.info("Early stopping: no better validation %s for %d epochs", s.early_stop_metric, bad)
                break
        if kept is None and improved and best_path.exists():  # resumed: the best epoch is on disk
            from patentml.artifact import load_arrays

            kept = {k: torch.from_numpy(v) for k, v in load_arrays(best_path).items()}
        if kept is None and not improved:
            kept = initial
        if kept is not None:
            model.load_state_dict(kept)
        model.to("cpu").eval()
        return LoopResult(best, improved, epoch + 1 - start)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
