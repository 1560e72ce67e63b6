"""One training run: spec + hparams + budget + corpus + seed → :class:`RunRecord`.

:func:`train` is the one training loop of hptransfer. It knows nothing of Optuna or Ray:
searches call it and read the record; pruners plug in through ``on_eval``. The same call on
the CPU with the same thread count returns the same losses bit for bit (init and batches
come from ``seed``, validation windows are fixed). Under ``torch.distributed`` it trains
data parallel, replicated or sharded (:mod:`hptransfer.training.ranks`), and every rank
returns the same record. With checkpoints (:mod:`hptransfer.training.checkpoint`) a rerun of
a killed run resumes from its last one and ends as the uninterrupted run would.
docs/foundation.md has the threads, precision and throughput measurements.
"""

from __future__ import annotations

import gc
import math
import time
import traceback
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from hptransfer.budget import Budget
from hptransfer.data.corpus import Corpus, load_corpus
from hptransfer.errors import ConfigError
from hptransfer.hparams import HParams
from hptransfer.models.family import logits_of
from hptransfer.models.registry import family_of, role_table
from hptransfer.mup.rules import formulation
from hptransfer.mup.tensors import scale_init
from hptransfer.provenance import collect
from hptransfer.record import CurvePoint, RunRecord, Status, Verdict
from hptransfer.spec import ModelSpec
from hptransfer.training.checkpoint import Checkpointer, LoopState, fingerprint
from hptransfer.training.device import autocast, check_memory, resolve_device, resolve_threads
from hptransfer.training.execution import Compilation, Execution, Sharding
from hptransfer.training.optimizer import build_optimizer
from hptransfer.training.ranks import (
    Ranks,
    distribute,
    in_process_group,
    rows_per_worker,
    run_together,
)
from hptransfer.training.schedule import lr_factor
from hptransfer.training.shards import build_sharded, shard_elements

__all__ = ["EvalCallback", "evaluate", "token_loss", "train"]

EvalCallback = Callable[[CurvePoint], "Verdict | None"]

# Rows per validation forward pass; independent of the training batch so every run of a
# sweep evaluates the same windows the same way.
_EVAL_ROWS = 32
_EVAL_LOGITS_BYTES = 1 << 26  # evaluation's logits per forward (evaluate)
# The training curve keeps at most this many points (means over equal blocks of steps).
_TRAIN_CURVE_POINTS = 100
# Steps at the start of each attempt (a run, or its resume) that tokens_per_s leaves out.
# The first step pays for CUDA's lazy init, the caching allocator's growth and cuBLAS's
# choice of kernels; compiled, it also traces and compiles forward and backward (tens of
# seconds on a GPU), and the second is left out too as a margin for one recompile (a guard
# failing on the state the first step left, e.g. the optimizer's).
_WARMUP_STEPS = {Compilation.EAGER: 1, Compilation.COMPILED: 2}


class _StepClock:
    """Time spent in training steps: all of it, and the part past each attempt's warm-up
    (the first ``warmup`` steps it runs), which is what :attr:`RunRecord.tokens_per_s`
    counts. A resumed attempt starts from the totals its checkpoint saved."""

    def __init__(self, warmup: int, *, seconds: float = 0.0, timed_steps: int = 0,
                 timed_seconds: float = 0.0) -> None:
        self.warmup, self.seconds = warmup, seconds
        self.timed_steps, self.timed_seconds = timed_steps, timed_seconds
        self._ran = 0  # steps of this attempt

    def add(self, seconds: float) -> None:
        """Count one step that took ``seconds``."""
        self.seconds += seconds
        self._ran += 1
        if self._ran > self.warmup:
            self.timed_steps += 1
            self.timed_seconds += seconds

    def throughput(self, steps: int, tokens_per_step: int) -> tuple[float, int]:
        """(tokens per second, the steps it counts) after ``steps`` steps in all: the timed
        steps', or every step's when none was past a warm-up (a run of one or two steps;
        its figure includes the warm-up, and says so by counting every step)."""
        steps_counted, seconds = ((self.timed_steps, self.timed_seconds) if self.timed_steps
                                  else (steps, self.seconds))
        return (steps_counted * tokens_per_step / seconds if seconds > 0 else 0.0,
                steps_counted)


def token_loss(model: torch.nn.Module, batch: torch.Tensor, *, check: bool = False
               ) -> torch.Tensor:
    """Mean next-token cross-entropy of a (rows, T + 1) window batch, computed in fp32.

    ``check`` verifies the model's side of the contract first (logits (B, T, V) with V
    above every target id): a clear error instead of an index error deep in the loss.
    """
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = logits_of(model(inputs))
    if check:
        _check_logits(logits, inputs, targets)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def _check_logits(logits: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(inputs.shape):
        raise ConfigError(f"the model maps token ids {tuple(inputs.shape)} to "
                          f"{tuple(logits.shape)}; its forward must return logits (B, T, V)")
    top = int(targets.max())
    if logits.shape[-1] <= top:
        raise ConfigError(f"the model's logits have V = {logits.shape[-1]} entries but the "
                          f"corpus has token id {top}: build it with a vocabulary of at least "
                          f"{top + 1} (the factory gets vocab= when it takes that keyword)")


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[torch.Tensor], spec: ModelSpec) -> float:
    """Token-weighted mean validation loss over fixed window batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with autocast(spec, batches[0].device.type if batches else "cpu"):
        for batch in batches:
            # at most _EVAL_LOGITS_BYTES of fp32 logits at once: 32 rows of a 100k
            # vocabulary at T = 128 are 1.6 GB (3.3 GB with the softmax), a byte-level
            # batch 4 MB (never split, so its loss is the same to the bit). Measured: a
            # tune on a 2 GB uint32 file (V 32,768, batch 4) peaked at 2.86 GB RSS; 0.93 GB
            # with this and tokens.release
            step = max(1, _EVAL_LOGITS_BYTES // (4 * spec.vocab * (batch.shape[1] - 1)))
            for part in batch.split(step):
                rows = part.shape[0]
                total += token_loss(model, part).item() * rows
                count += rows
    model.train(was_training)
    return total / count


def train(spec: ModelSpec, hparams: HParams, budget: Budget, corpus: Corpus | None = None,
          *, seed: int = 0, on_eval: EvalCallback | None = None,
          threads: int | None = None, device: str | None = None,
          execution: Execution | None = None) -> RunRecord:
    """Train one model and return its record.

    ``device``: ``cpu`` (default) or ``cuda[:N]`` (under torch.distributed: this rank's
    card). The init is drawn on the CPU either way (the same seed gives the same initial
    weights on every device), then moved; sharded, each tensor is drawn whole on the CPU and
    only this rank's shard is kept (:mod:`hptransfer.training.shards`). ``execution``:
    sharding, ``torch.compile`` and checkpoints
    (:class:`~hptransfer.training.execution.Execution`; None: replicated, eager, no
    checkpoints).

    The record's ``tokens_per_s`` counts the steps past each attempt's warm-up (its first
    step, its first two compiled: ``_WARMUP_STEPS``), so a compile's time is not in it;
    ``peak_memory_bytes`` is the run's peak of allocated CUDA memory (None on the CPU).

    ``on_eval`` is called with every validation point; returning :attr:`Verdict.STOP`
    ends the run as :attr:`Status.PRUNED`. Non-finite losses or a training loss above
    ``budget.divergence_factor`` × its first value end it as :attr:`Status.DIVERGED`.

    Under ``torch.distributed`` with N > 1 ranks the run is data parallel (module
    docstring): ``hparams.batch_size`` is the global batch and must be divisible by N, and
    ``on_eval`` is called on rank 0 only, its verdict applying to every rank. A rank that
    raises ends the run on every rank at once: the others raise
    :class:`~hptransfer.training.ranks.PeerFailed` with its error
    (:func:`~hptransfer.training.ranks.run_together`). Whatever happens, the run's memory is
    freed before this returns or raises (GPU caches too).
    """
    started = time.perf_counter()
    execution = execution or Execution()
    ranks = Ranks.current()
    # FSDP2 wherever there is a process group, even of one rank (a one-GPU check of the
    # sharded path); DDP only with two ranks or more
    sharded = execution.sharding is Sharding.FSDP and in_process_group()
    rows_per_worker(hparams.batch_size, ranks.size)  # refuse an uneven split before any work
    threads = resolve_threads(threads)
    torch.set_num_threads(threads)
    on = resolve_device(device)
    if on.type == "cuda":
        # "cuda" alone is the current card (a Ray trial's only visible one); NCCL and FSDP2
        # use each rank's current device, and set_device needs an index
        on = torch.device("cuda", on.index if on.index is not None
                          else torch.cuda.current_device())
        torch.cuda.set_device(on)
    corpus = corpus if corpus is not None else load_corpus()
    if corpus.vocab_size > spec.vocab:
        raise ConfigError(
            f"the corpus {corpus.name} has vocabulary {corpus.vocab_size} but the model spec "
            f"has vocab={spec.vocab}; set vocab to at least {corpus.vocab_size}")

    family = family_of(spec)
    family.check(spec)
    # an impossible model is refused from its formula before its role table is built (that
    # builds the model at the base width and traces it). Sharded, each rank only ever holds
    # its shards of the weights, gradients and optimizer state (built from the meta device:
    # hptransfer.training.shards), and one whole tensor at a time while the init draws it.
    what = f"the {spec.model} model at width {spec.width}, depth {spec.depth}"
    check_memory(family.parameter_count(spec, embedding=True) // (ranks.size if sharded else 1),
                 on, what + (f" sharded over {ranks.size} ranks" if sharded else ""))
    roles = role_table(spec)
    if sharded:
        check_memory(shard_elements(roles, ranks.size), on,
                     what + f" sharded over {ranks.size} ranks",
                     drawn_whole=max(math.prod(row.shape) for row in roles))
    try:
        return run_together(ranks, lambda together: _train(
            spec, hparams, budget, corpus, seed=seed, on_eval=on_eval, threads=threads,
            on=on, execution=execution, ranks=together, sharded=sharded, started=started))
    except Exception as error:
        # the failed run's frames hold its model and optimizer until the caller drops the
        # error (a study records it and goes on): clear them, the memory is garbage now
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        # a failed run's model, gradients and optimizer state are garbage once its frames
        # are gone: free them before the next run of this process (a torchrun job's next
        # order, a tune worker's next trial), and hand a GPU's cached blocks back
        gc.collect()
        if on.type == "cuda":
            torch.cuda.empty_cache()


def _train(spec: ModelSpec, hparams: HParams, budget: Budget, corpus: Corpus, *, seed: int,
           on_eval: EvalCallback | None, threads: int, on: torch.device,
           execution: Execution, ranks: Ranks, sharded: bool, started: float) -> RunRecord:
    """:func:`train` after its checks, on ``ranks``' own process group."""
    if on.type == "cuda":
        # the peak this run reaches (RunRecord.peak_memory_bytes), not the process's: a
        # study's worker or a torchrun job trains many runs one after another
        torch.cuda.reset_peak_memory_stats(on)
    family = family_of(spec)
    roles = role_table(spec)
    torch.manual_seed(seed)
    if sharded:
        model = build_sharded(spec, hparams, seed=seed, device=on, group=ranks.group)
    else:
        model = family.build(spec, seed=seed)
        scale_init(model, roles, hparams)  # the readout's τ (an hparam, unknown to the build)
        model = model.to(on)
    # DDP all-reduces gradients during backward; FSDP2 sharded `model` as it was built.
    # Either way the optimizer (built after sharding, as FSDP2 requires), clipping and
    # evaluation work on `model`, whose parameters keep their names and global shapes.
    forward = (distribute(model, execution.sharding, on, ranks.group)
               if ranks.parallel and not sharded else model)
    if execution.compilation is Compilation.COMPILED:
        forward = torch.compile(forward)
    optimizer = build_optimizer(model, roles, spec, hparams)
    peak_lrs = [group["lr"] for group in optimizer.param_groups]
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    tokens_per_step = hparams.batch_size * spec.seq_len
    planned = budget.resolve_steps(tokens_per_step=tokens_per_step)
    rng = np.random.default_rng(seed)
    validation = [torch.from_numpy(rows).to(on) for rows in
                  corpus.validation_batches(_EVAL_ROWS, spec.seq_len, budget.eval_tokens)]

    status, reason = Status.COMPLETE, None
    val_curve: list[CurvePoint] = []
    train_losses: list[float] = []
    first_loss = None
    clock = _StepClock(_WARMUP_STEPS[execution.compilation])
    step = 0
    resumed_at: tuple[int, ...] = ()
    saver = None
    if execution.checkpoint is not None:
        saver = Checkpointer(execution.checkpoint, ranks=ranks, run=fingerprint(
            spec, hparams, budget, seed, corpus.content_hash, execution.checkpoint.owner))
        state = saver.restore(model, optimizer, planned)
        if state is not None:
            step, first_loss = state.step, state.first_loss
            clock = _StepClock(clock.warmup, seconds=state.train_seconds,
                               timed_steps=state.timed_steps,
                               timed_seconds=state.timed_seconds)
            train_losses, val_curve = list(state.train_losses), list(state.val_curve)
            rng.bit_generator.state = state.batches
            resumed_at = (*state.resumed_at, state.step)
    while step < planned:
        tick = time.perf_counter()
        factor = lr_factor(step, total_steps=planned, hparams=hparams)
        for group, peak in zip(optimizer.param_groups, peak_lrs, strict=True):
            group["lr"] = peak * factor
        batch = torch.from_numpy(corpus.train_batch(rng, hparams.batch_size, spec.seq_len))
        batch = batch.to(on, non_blocking=True)
        with autocast(spec, on.type):
            loss = token_loss(forward, ranks.rows(batch), check=step == 0)
        loss.backward()
        if hparams.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, hparams.grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = ranks.mean(loss)
        clock.add(time.perf_counter() - tick)  # ranks.mean waited for the step's kernels
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
            # rank 0 evaluates for all: the ranks hold the same weights, and then hold the
            # same curve too (sharded, every rank takes part in the forward's all-gathers)
            loss_here = (evaluate(model, validation, spec) if ranks.rank == 0 or sharded
                         else math.nan)
            point = CurvePoint(step=step, tokens=step * tokens_per_step,
                               loss=ranks.shared(loss_here))
            if not math.isfinite(point.loss):
                status, reason = Status.DIVERGED, f"validation loss is {point.loss} at step {step}"
                break
            val_curve.append(point)
            stop = (on_eval is not None and ranks.rank == 0
                    and on_eval(point) is Verdict.STOP)
            if ranks.shared(float(stop)):
                status, reason = Status.PRUNED, f"stopped by on_eval at step {step}"
                break
        if saver is not None and step < planned and saver.due(step):
            saver.save(model, optimizer, LoopState(
                step=step, train_losses=tuple(train_losses), val_curve=tuple(val_curve),
                first_loss=first_loss, train_seconds=clock.seconds,
                timed_steps=clock.timed_steps, timed_seconds=clock.timed_seconds,
                batches=rng.bit_generator.state, resumed_at=resumed_at))

    if saver is not None:
        saver.discard()
    tokens = step * tokens_per_step
    tokens_per_s, timed_steps = clock.throughput(step, tokens_per_step)
    final = val_curve[-1].loss if val_curve and status is not Status.DIVERGED else None
    return RunRecord(
        status=status, reason=reason,
        final_val_loss=final, final_val_bpb=corpus.bits_per_byte(final),
        val_curve=tuple(val_curve),
        train_curve=_downsample(train_losses, tokens_per_step),
        steps=step, planned_steps=planned, tokens_seen=tokens,
        flops=family.flops_per_token(spec) * tokens,
        wall_time_s=time.perf_counter() - started,
        tokens_per_s=tokens_per_s, timed_steps=timed_steps,
        peak_memory_bytes=(torch.cuda.max_memory_allocated(on) if on.type == "cuda"
                           else None),
        resumed_at=resumed_at,
        spec=spec, hparams=hparams, budget=budget, seed=seed, corpus=corpus.describe(),
        parametrization=formulation(spec), provenance=collect(threads))


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
