"""One training run: spec + hparams + budget + corpus + seed → :class:`RunRecord`.

:func:`train` is the one training loop of hptransfer. It knows nothing of Optuna or Ray:
searches call it and read the record; pruners plug in through ``on_eval``.

Threads: PyTorch's intra-op pool is set to ``threads`` (default: the ``HPTRANSFER_THREADS``
environment variable, else every CPU this process may use). Several concurrent workers on
one machine should each get cores / workers, or they oversubscribe and all slow down.

Determinism: the init comes from a generator seeded with ``seed``; batches from a NumPy
generator seeded with ``seed``; validation windows are fixed. On CPU with the same thread
count the same call returns the same losses bit for bit (tested).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from hptransfer.budget import Budget
from hptransfer.corpus import Corpus, load_corpus
from hptransfer.hparams import HParams
from hptransfer.model import Transformer
from hptransfer.optimizer import build_optimizer
from hptransfer.parametrization import FORMULATION
from hptransfer.provenance import available_cpus, collect
from hptransfer.record import CurvePoint, RunRecord, Status, Verdict
from hptransfer.schedule import lr_factor
from hptransfer.spec import ModelSpec, Precision

__all__ = ["EvalCallback", "evaluate", "resolve_threads", "train"]

EvalCallback = Callable[[CurvePoint], "Verdict | None"]

# Rows per validation forward pass; independent of the training batch so every run of a
# sweep evaluates the same windows the same way.
_EVAL_ROWS = 32
# The training curve keeps at most this many points (means over equal blocks of steps).
_TRAIN_CURVE_POINTS = 100


def resolve_threads(threads: int | None = None) -> int:
    """Threads to use: the argument, else ``HPTRANSFER_THREADS``, else all available CPUs."""
    if threads is None:
        env = os.environ.get("HPTRANSFER_THREADS", "").strip()
        threads = int(env) if env else available_cpus()
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    return threads


def _autocast(spec: ModelSpec):
    # bf16 autocast keeps fp32 master weights and optimizer state; only matmul inputs and
    # outputs are bf16. On AVX512-BF16 CPUs this runs matmuls ~4× faster than fp32.
    return torch.autocast("cpu", dtype=torch.bfloat16,
                          enabled=spec.precision is Precision.BF16)


def _loss(model: Transformer, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a (rows, T + 1) window batch, computed in fp32."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(inputs)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


@torch.no_grad()
def evaluate(model: Transformer, batches: list[torch.Tensor]) -> float:
    """Token-weighted mean validation loss over fixed window batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with _autocast(model.spec):
        for batch in batches:
            rows = batch.shape[0]
            total += _loss(model, batch).item() * rows
            count += rows
    model.train(was_training)
    return total / count


def train(spec: ModelSpec, hparams: HParams, budget: Budget, corpus: Corpus | None = None,
          *, seed: int = 0, on_eval: EvalCallback | None = None,
          threads: int | None = None) -> RunRecord:
    """Train one model and return its record.

    ``on_eval`` is called with every validation point; returning :attr:`Verdict.STOP`
    ends the run as :attr:`Status.PRUNED`. Non-finite losses or a training loss above
    ``budget.divergence_factor`` × its first value end it as :attr:`Status.DIVERGED`.
    """
    started = time.perf_counter()
    threads = resolve_threads(threads)
    torch.set_num_threads(threads)
    corpus = corpus if corpus is not None else load_corpus()
    if corpus.vocab_size > spec.vocab:
        raise ValueError(
            f"the corpus {corpus.name} has vocabulary {corpus.vocab_size} but the model spec "
            f"has vocab={spec.vocab}; set vocab to at least {corpus.vocab_size}")

    torch.manual_seed(seed)
    model = Transformer(spec, seed=seed)
    optimizer = build_optimizer(model, spec, hparams)
    peak_lrs = [group["lr"] for group in optimizer.param_groups]
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    tokens_per_step = hparams.batch_size * spec.seq_len
    planned = budget.resolve_steps(tokens_per_step=tokens_per_step)
    rng = np.random.default_rng(seed)
    validation = [torch.from_numpy(rows) for rows in
                  corpus.validation_batches(_EVAL_ROWS, spec.seq_len, budget.eval_tokens)]

    status, reason = Status.COMPLETE, None
    val_curve: list[CurvePoint] = []
    train_losses: list[float] = []
    first_loss = None
    train_seconds = 0.0
    step = 0
    while step < planned:
        tick = time.perf_counter()
        factor = lr_factor(step, total_steps=planned, hparams=hparams)
        for group, peak in zip(optimizer.param_groups, peak_lrs, strict=True):
            group["lr"] = peak * factor
        batch = torch.from_numpy(corpus.train_batch(rng, hparams.batch_size, spec.seq_len))
        with _autocast(spec):
            loss = _loss(model, batch)
        loss.backward()
        if hparams.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, hparams.grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        train_seconds += time.perf_counter() - tick
        step += 1
        train_losses.append(value)

        first_loss = value if first_loss is None else first_loss
        if not math.isfinite(value):
            status, reason = Status.DIVERGED, f"training loss is {value} at step {step}"
            break
        if value > budget.divergence_factor * first_loss:
            status, reason = Status.DIVERGED, (
                f"training loss {value:.3f} at step {step} exceeds "
                f"{budget.divergence_factor} × the first loss {first_loss:.3f}")
            break
        if step % budget.eval_every == 0 or step == planned:
            point = CurvePoint(step=step, tokens=step * tokens_per_step,
                               loss=evaluate(model, validation))
            if not math.isfinite(point.loss):
                status, reason = Status.DIVERGED, f"validation loss is {point.loss} at step {step}"
                break
            val_curve.append(point)
            if on_eval is not None and on_eval(point) is Verdict.STOP:
                status, reason = Status.PRUNED, f"stopped by on_eval at step {step}"
                break

    tokens = step * tokens_per_step
    return RunRecord(
        status=status, reason=reason,
        final_val_loss=val_curve[-1].loss if val_curve and status is not Status.DIVERGED
        else None,
        val_curve=tuple(val_curve),
        train_curve=_downsample(train_losses, tokens_per_step),
        steps=step, planned_steps=planned, tokens_seen=tokens,
        flops=spec.flops_per_token() * tokens,
        wall_time_s=time.perf_counter() - started,
        tokens_per_s=tokens / train_seconds if train_seconds > 0 else 0.0,
        spec=spec, hparams=hparams, budget=budget, seed=seed, corpus=corpus.describe(),
        parametrization=FORMULATION, provenance=collect(threads))


def _downsample(losses: list[float], tokens_per_step: int) -> tuple[CurvePoint, ...]:
    """Mean training loss over at most _TRAIN_CURVE_POINTS equal blocks of steps.

    Non-finite values are kept as they are (they explain a divergence); JSON writes them
    as NaN/Infinity only if present.
    """
    if not losses:
        return ()
    block = max(1, math.ceil(len(losses) / _TRAIN_CURVE_POINTS))
    points = []
    for start in range(0, len(losses), block):
        chunk = losses[start:start + block]
        end = start + len(chunk)
        points.append(CurvePoint(step=end, tokens=end * tokens_per_step,
                                 loss=float(sum(chunk) / len(chunk))))
    return tuple(points)
