"""One training run: spec + hparams + budget + corpus + seed → :class:`RunRecord`.

:func:`train` is the one training loop of hptransfer. It knows nothing of Optuna or Ray:
searches call it and read the record; pruners plug in through ``on_eval``. The same call on
the CPU with the same thread count returns the same losses bit for bit (init and batches
come from ``seed``, validation windows are fixed). Under ``torch.distributed`` it trains
data parallel, replicated or sharded (:mod:`hptransfer.training.ranks`), and every rank
returns the same record. With checkpoints (:mod:`hptransfer.training.checkpoint`) a rerun of
a killed run resumes from its last one and ends as the uninterrupted run would.

It reads as nanoGPT's ``train.py`` does, in three parts that are tested apart:
:func:`setup` builds everything a run needs before its first step (the model whole or
straight into its shards, the optimizer, the batches, the restored checkpoint), :func:`step`
is one optimizer step, and ``_evaluate_point`` is a validation point and its verdict; the
loop in ``_train`` strings them together with the divergence checks and the checkpoints.
docs/foundation.md has the threads, precision and throughput measurements.
"""

from __future__ import annotations

import gc
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

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

__all__ = ["EvalCallback", "Progress", "Run", "evaluate", "setup", "step", "token_loss", "train"]

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
    """:func:`train` after its checks, on ``ranks``' own process group: :func:`setup`, then
    :func:`step` after step, each followed by the checks that may end the run, a validation
    point when one is due (:func:`_evaluate_point`) and a checkpoint when one is due."""
    run = setup(spec, hparams, budget, corpus, seed=seed, on=on, execution=execution,
                ranks=ranks, sharded=sharded)
    progress = run.progress
    status, reason = Status.COMPLETE, None
    while progress.step < run.planned:
        tick = time.perf_counter()
        value = step(run, progress.step)
        progress.clock.add(time.perf_counter() - tick)  # ranks.mean waited for the kernels
        progress.step += 1
        progress.train_losses.append(value)
        ended = _diverged(value, progress, budget)
        if ended is None and (progress.step % budget.eval_every == 0
                              or progress.step == run.planned):
            ended = _evaluate_point(run, on_eval)
        if ended is not None:
            status, reason = ended
            break
        if (run.saver is not None and progress.step < run.planned
                and run.saver.due(progress.step)):
            run.saver.save(run.model, run.optimizer, progress.loop_state(run.rng))

    if run.saver is not None:
        run.saver.discard()
    return _record(run, status, reason, threads=threads, started=started)


@dataclass
class Progress:
    """What the loop has done so far: what a checkpoint saves (:meth:`loop_state`) and the
    record reports. Fresh at the start of a run, or restored from its checkpoint."""

    clock: _StepClock
    step: int = 0  # steps completed
    first_loss: float | None = None  # the divergence check's reference
    train_losses: list[float] = field(default_factory=list)
    val_curve: list[CurvePoint] = field(default_factory=list)
    resumed_at: tuple[int, ...] = ()  # the steps earlier attempts resumed from

    @classmethod
    def resumed(cls, state: LoopState, warmup: int) -> Progress:
        """Where a checkpoint's loop state left off; this attempt's warm-up starts anew."""
        return cls(_StepClock(warmup, seconds=state.train_seconds,
                              timed_steps=state.timed_steps,
                              timed_seconds=state.timed_seconds),
                   step=state.step, first_loss=state.first_loss,
                   train_losses=list(state.train_losses), val_curve=list(state.val_curve),
                   resumed_at=(*state.resumed_at, state.step))

    def loop_state(self, rng: np.random.Generator) -> LoopState:
        """What a checkpoint after this step saves, with the batch generator's state."""
        return LoopState(step=self.step, train_losses=tuple(self.train_losses),
                         val_curve=tuple(self.val_curve), first_loss=self.first_loss,
                         train_seconds=self.clock.seconds, timed_steps=self.clock.timed_steps,
                         timed_seconds=self.clock.timed_seconds,
                         batches=rng.bit_generator.state, resumed_at=self.resumed_at)


@dataclass(frozen=True)
class Run:
    """One run ready to train (:func:`setup`): what it trains, and the live objects that
    train it. A live handle, never a record: it holds the model and lives on one rank.
    Only ``progress`` (and the objects' own state: weights, optimizer, ``rng``) changes."""

    spec: ModelSpec
    hparams: HParams
    budget: Budget
    corpus: Corpus
    seed: int
    on: torch.device
    ranks: Ranks
    sharded: bool
    model: torch.nn.Module  # what the optimizer, clipping, evaluation and checkpoints see
    forward: torch.nn.Module  # what the step calls: the model, its DDP wrapper, compiled
    optimizer: torch.optim.Optimizer
    peak_lrs: list[float]  # each param group's LR before the schedule's factor
    parameters: list[torch.nn.Parameter]  # in the optimizer's order (clipping)
    planned: int  # steps
    tokens_per_step: int  # of the global batch
    rng: np.random.Generator  # the training batches'
    validation: list[torch.Tensor]  # fixed window batches, on ``on``
    saver: Checkpointer | None
    progress: Progress


def setup(spec: ModelSpec, hparams: HParams, budget: Budget, corpus: Corpus, *, seed: int,
          on: torch.device, execution: Execution, ranks: Ranks, sharded: bool) -> Run:
    """Everything a run needs before its first step, on this rank: the model built whole
    from ``seed`` (moved to ``on``) or straight into its FSDP2 shards, what the step calls
    (DDP, ``torch.compile``), the optimizer and its peak LRs, the planned steps, the batch
    generator, the validation batches, and the checkpointer with the progress restored
    from the run's checkpoint (None of these: a fresh start). Every rank calls it alike
    (building sharded, restoring and DDP's construction are collectives)."""
    if on.type == "cuda":
        # the peak this run reaches (RunRecord.peak_memory_bytes), not the process's: a
        # study's worker or a torchrun job trains many runs one after another
        torch.cuda.reset_peak_memory_stats(on)
    family = family_of(spec)
    roles = role_table(spec)
    torch.manual_seed(seed)
    if sharded:
        # bf16 compute and fp32 gradient reduction when spec.precision is bf16, each block
        # compiled when the run is (models/sharding.py says why per block)
        model = build_sharded(spec, hparams, seed=seed, device=on, group=ranks.group,
                              compilation=execution.compilation)
    else:
        model = family.build(spec, seed=seed)
        scale_init(model, roles, hparams)  # the readout's τ (an hparam, unknown to the build)
        model = model.to(on)
    # DDP all-reduces gradients during backward; FSDP2 sharded `model` as it was built.
    # Either way the optimizer (built after sharding, as FSDP2 requires), clipping and
    # evaluation work on `model`, whose parameters keep their names and global shapes.
    forward = (distribute(model, execution.sharding, on, ranks.group)
               if ranks.parallel and not sharded else model)
    if execution.compilation is Compilation.COMPILED and not sharded:
        # replicated: the whole forward is one graph (DDP's bucketed all-reduce runs in
        # its backward hooks). Sharded, build_sharded compiled each block: a compiled
        # root would break its graph at every FSDP2 unit
        forward = torch.compile(forward)
    optimizer = build_optimizer(model, roles, spec, hparams)
    # read before a restore, which loads the LRs the schedule had set at the checkpoint
    peak_lrs = [group["lr"] for group in optimizer.param_groups]
    tokens_per_step = hparams.batch_size * spec.seq_len
    planned = budget.resolve_steps(tokens_per_step=tokens_per_step)
    rng = np.random.default_rng(seed)
    validation = [torch.from_numpy(rows).to(on) for rows in
                  corpus.validation_batches(_EVAL_ROWS, spec.seq_len, budget.eval_tokens)]
    warmup = _WARMUP_STEPS[execution.compilation]
    progress, saver = Progress(_StepClock(warmup)), None
    if execution.checkpoint is not None:
        saver = Checkpointer(execution.checkpoint, ranks=ranks, run=fingerprint(
            spec, hparams, budget, seed, corpus.content_hash, execution.checkpoint.owner))
        state = saver.restore(model, optimizer, planned)
        if state is not None:
            progress = Progress.resumed(state, warmup)
            rng.bit_generator.state = state.batches
    return Run(spec=spec, hparams=hparams, budget=budget, corpus=corpus, seed=seed, on=on,
               ranks=ranks, sharded=sharded, model=model, forward=forward,
               optimizer=optimizer, peak_lrs=peak_lrs,
               parameters=[p for group in optimizer.param_groups for p in group["params"]],
               planned=planned, tokens_per_step=tokens_per_step, rng=rng,
               validation=validation, saver=saver, progress=progress)


def step(run: Run, index: int) -> float:
    """Optimizer step ``index`` (from 0) of ``run``: the schedule's LRs, the next global
    batch from ``run.rng`` (this rank trains on its rows), forward under autocast,
    backward, clipping, the update. Returns the global batch's training loss, the same
    float on every rank. Only the first step checks the model's logits (a clear error)."""
    factor = lr_factor(index, total_steps=run.planned, hparams=run.hparams)
    for group, peak in zip(run.optimizer.param_groups, run.peak_lrs, strict=True):
        group["lr"] = peak * factor
    spec, hparams = run.spec, run.hparams
    batch = torch.from_numpy(run.corpus.train_batch(run.rng, hparams.batch_size, spec.seq_len))
    batch = batch.to(run.on, non_blocking=True)
    with autocast(spec, run.on.type):
        loss = token_loss(run.forward, run.ranks.rows(batch), check=index == 0)
    loss.backward()
    if hparams.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.parameters, hparams.grad_clip, foreach=True)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return run.ranks.mean(loss)


def _diverged(value: float, progress: Progress, budget: Budget) -> tuple[Status, str] | None:
    """(DIVERGED, why) when the training loss ``value`` of the step just counted in
    ``progress`` is not finite or exceeds ``budget.divergence_factor`` × the first."""
    if progress.first_loss is None:
        progress.first_loss = value
    at, first = progress.step, progress.first_loss
    if not math.isfinite(value):
        return Status.DIVERGED, f"training loss is {value} at step {at}"
    if value > budget.divergence_factor * first:
        return Status.DIVERGED, (f"training loss {value:.3f} at step {at} exceeds "
                                 f"{budget.divergence_factor} × the first loss {first:.3f}")
    return None


def _evaluate_point(run: Run, on_eval: EvalCallback | None) -> tuple[Status, str] | None:
    """The validation point after the step just counted in ``run.progress``, appended to
    its curve; (DIVERGED or PRUNED, why) when it ends the run, on every rank alike."""
    ranks, at = run.ranks, run.progress.step
    # rank 0 evaluates for all: the ranks hold the same weights, and then hold the same
    # curve too (sharded, every rank takes part in the forward's all-gathers)
    loss_here = (evaluate(run.model, run.validation, run.spec)
                 if ranks.rank == 0 or run.sharded else math.nan)
    point = CurvePoint(step=at, tokens=at * run.tokens_per_step, loss=ranks.shared(loss_here))
    if not math.isfinite(point.loss):
        return Status.DIVERGED, f"validation loss is {point.loss} at step {at}"
    run.progress.val_curve.append(point)
    stop = on_eval is not None and ranks.rank == 0 and on_eval(point) is Verdict.STOP
    if ranks.shared(float(stop)):
        return Status.PRUNED, f"stopped by on_eval at step {at}"
    return None


def _record(run: Run, status: Status, reason: str | None, *, threads: int,
            started: float) -> RunRecord:
    """The record of ``run`` as its loop left it."""
    progress, on, corpus, spec = run.progress, run.on, run.corpus, run.spec
    tokens = progress.step * run.tokens_per_step
    tokens_per_s, timed_steps = progress.clock.throughput(progress.step, run.tokens_per_step)
    val_curve = progress.val_curve
    final = val_curve[-1].loss if val_curve and status is not Status.DIVERGED else None
    return RunRecord(
        status=status, reason=reason,
        final_val_loss=final, final_val_bpb=corpus.bits_per_byte(final),
        val_curve=tuple(val_curve),
        train_curve=_downsample(progress.train_losses, run.tokens_per_step),
        steps=progress.step, planned_steps=run.planned, tokens_seen=tokens,
        flops=family_of(spec).flops_per_token(spec) * tokens,
        wall_time_s=time.perf_counter() - started,
        tokens_per_s=tokens_per_s, timed_steps=timed_steps,
        peak_memory_bytes=(torch.cuda.max_memory_allocated(on) if on.type == "cuda"
                           else None),
        resumed_at=progress.resumed_at,
        spec=spec, hparams=run.hparams, budget=run.budget, seed=run.seed,
        corpus=corpus.describe(), parametrization=formulation(spec),
        provenance=collect(threads))


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
