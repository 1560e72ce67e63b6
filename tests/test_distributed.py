"""Data-parallel training: two gloo processes on CPU follow the single-process run,
replicated (DDP) and sharded (FSDP2), and resume from checkpoints.

One module fixture spawns two ranks once (torch.multiprocessing, no Ray); each rank trains
the same few tiny runs and writes its records as JSON, which the tests compare with the
same runs trained in this process. Another (``resumes``) spawns sharded jobs of 4 and 2
ranks that stop and resume runs from their sharded checkpoints, on as many ranks and on
another number; another (``failures``) 4 ranks, one of which fails alone.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hptransfer.budget import Budget
from hptransfer.hparams import HParams
from hptransfer.record import RunRecord, Status, Verdict
from hptransfer.spec import ModelSpec, Precision
from hptransfer.training.execution import Checkpointing, Execution, Sharding
from hptransfer.training.loop import train

WORKERS = 2
JOB_TIMEOUT_S = 120  # every spawned job's collective timeout (_job)
SPEC = ModelSpec(width=32, depth=2, head_dim=16, seq_len=32, base_width=32)  # = tiny_spec
BUDGET = Budget(steps=12, eval_every=4, eval_tokens=1024)
HPARAMS = HParams(batch_size=4, lr=2.0**-6)
DIVERGING = HParams(batch_size=4, lr=8.0, warmup_fraction=0.0, grad_clip=0.0)
TOLERANCE = 1e-4  # relative: float rounding of a split mean, not a different computation
# µP at twice the base width with weight decay: param groups with different LRs and λs,
# which sharding must keep (the role table gives them by name, and names survive it)
WIDE = ModelSpec(width=64, depth=2, head_dim=16, seq_len=32, base_width=32)
WIDE_HPARAMS = HParams(batch_size=4, lr=2.0**-6, weight_decay=0.1)
FSDP = Execution(sharding=Sharding.FSDP)
# the Hugging Face families where transformers is installed (the dev extra has it)
HF_MODELS = ("hf-llama", "hf-gpt2") if importlib.util.find_spec("transformers") else ()


def _hf(model: str) -> ModelSpec:
    return WIDE.model_copy(update={"model": model})


def _groups(spec: ModelSpec, sharding: Sharding | None) -> list[list]:
    """(lr, λ, ε, parameter count) of each optimizer group, with the model sharded or not."""
    from hptransfer.models.registry import build_model, role_table
    from hptransfer.training.optimizer import build_optimizer
    from hptransfer.training.ranks import distribute

    model = build_model(spec, seed=0)
    if sharding is not None:
        import torch

        distribute(model, sharding, torch.device("cpu"))
    optimizer = build_optimizer(model, role_table(spec), spec, WIDE_HPARAMS)
    return [[g["lr"], g["weight_decay"], g["eps"], sum(p.numel() for p in g["params"])]
            for g in optimizer.param_groups]


def _stop_at_second_eval(seen: list):
    def on_eval(point):
        seen.append(point)
        return Verdict.STOP if len(seen) == 2 else Verdict.CONTINUE

    return on_eval


def _sharded_init(model: str) -> dict[str, object]:
    """Build ``model`` at WIDE straight into its shards (seed 7, readout τ = 2) and compare
    it with the unsharded build: the largest difference of any parameter or buffer, and the
    parameter bytes this rank holds against the whole model's."""
    import torch

    from hptransfer.models.registry import build_model, role_table
    from hptransfer.training.shards import build_sharded, local_bytes, shard_elements

    spec, hparams = WIDE.model_copy(update={"model": model}), HParams(readout_mult=2.0)
    sharded = build_sharded(spec, hparams, seed=7, device=torch.device("cpu"))
    whole = build_model(spec, seed=7, hparams=hparams)
    gathered = {name: p.full_tensor() for name, p in sharded.named_parameters()}
    buffers = dict(sharded.named_buffers())
    return {"parameter_difference": max((gathered[n] - p).abs().max().item()
                                        for n, p in whole.named_parameters()),
            "names": list(gathered) == [n for n, _ in whole.named_parameters()],
            "buffers_equal": all(torch.equal(buffers[n], b) for n, b in whole.named_buffers()),
            "readout_scaled": HParams().readout_mult != hparams.readout_mult,
            "local_bytes": local_bytes(sharded), "whole_bytes": local_bytes(whole),
            "expected_bytes": 4 * shard_elements(role_table(spec), WORKERS)}


FAIL_AT_STEP = 3
LEAVE_WITHIN = 20.0  # seconds; far below JOB_TIMEOUT_S, so a hang fails this bound


def _failing_runs(rank: int, workers: int, corpus) -> dict[str, dict]:
    """The last rank raises inside its model (the first MLP of its 3rd training step, where
    an out-of-memory would be: within FSDP2's hooks, or DDP's forward), in a replicated run
    and then in a sharded one. What each rank raised, when it left (wall clock, the same
    on every process of this machine), when the failing rank raised, and the run trained
    next on the same ranks."""
    import time

    from hptransfer.models import transformer
    from hptransfer.training import loop

    lr_factor, mlp, steps, raised = loop.lr_factor, transformer.MLP.forward, [], []

    def counting(step, **kwargs):  # called once at the start of every step, with its index
        steps.append(step)
        return lr_factor(step, **kwargs)

    def failing(self, x):
        if rank == workers - 1 and len(steps) == FAIL_AT_STEP and not raised:
            raised.append(time.time())
            raise OSError(f"injected failure on rank {rank}")
        return mlp(self, x)

    seen: dict[str, dict] = {}
    for sharding in Sharding:
        execution = Execution(sharding=sharding)
        steps.clear()
        raised.clear()
        loop.lr_factor, transformer.MLP.forward = counting, failing
        try:
            train(WIDE, WIDE_HPARAMS, Budget(steps=40, eval_every=4), corpus, threads=1,
                  execution=execution)
            run = {"error": None}
        except Exception as error:  # noqa: BLE001 - what each rank raised is the result
            run = {"error": type(error).__name__, "message": str(error)}
        finally:
            loop.lr_factor, transformer.MLP.forward = lr_factor, mlp
        run.update(left=time.time(), raised=raised[0] if raised else None,
                   steps_started=len(steps))
        run["next"] = train(WIDE, WIDE_HPARAMS, BUDGET, corpus, threads=1,
                            execution=execution).model_dump_json()
        seen[sharding.value] = run
    return seen



BF16 = WIDE.model_copy(update={"precision": Precision.BF16})
# relative, bf16 sharded against bf16 in one process: FSDP2's policy computes with the
# weights rounded to bf16 (8 bits of mantissa, 2^-9 relative) where autocast rounds only
# matmul inputs, and the residual stream starts bf16 (the embedding's weight is bf16 too);
# measured 7e-4 over these 12 steps. A policy that was not applied reproduces fp32's sharded
# run instead, which the dtype checks (_bf16_sharded) catch, not this bound.
BF16_TOLERANCE = 5e-3


def _bf16_sharded(corpus) -> dict[str, object]:
    """Set up a sharded bf16 run (FSDP2's MixedPrecisionPolicy) and take one step: the dtype
    a block computes with, the dtypes its gradients are reduce-scattered in, and whether
    every parameter is an fp32 DTensor before and after the step; then, with per-block
    compilation, which modules are compiled (setup only: compiling is lazy)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from hptransfer.training.execution import Compilation
    from hptransfer.training.loop import setup, step
    from hptransfer.training.ranks import Ranks, run_together

    def fp32_shards(model) -> bool:
        return all(isinstance(p, DTensor) and p.dtype == torch.float32
                   for p in model.parameters())

    def inspect(ranks: Ranks) -> dict[str, object]:
        run = setup(BF16, WIDE_HPARAMS, BUDGET, corpus, seed=0, on=torch.device("cpu"),
                    execution=FSDP, ranks=ranks, sharded=True)
        seen: dict[str, object] = {"before": fp32_shards(run.model), "reduced": set()}
        # inside the block, its parameters are all-gathered (unsharded) for the forward
        run.model.blocks[0].mlp.register_forward_pre_hook(lambda module, args: seen.update(
            compute=str(next(module.parameters()).dtype), inputs=str(args[0].dtype)))
        # FSDP2's reduce-scatter: reduce_scatter_single on torch 2.13, _tensor on 2.11
        name = ("reduce_scatter_single" if hasattr(dist, "reduce_scatter_single")
                else "reduce_scatter_tensor")
        reduce_scatter = getattr(dist, name)

        def spy(*args, **kwargs):
            seen["reduced"].add(str(kwargs.get("input", args[1] if len(args) > 1 else None)
                                    .dtype))
            return reduce_scatter(*args, **kwargs)

        setattr(dist, name, spy)
        try:
            seen["loss"] = step(run, 0)
        finally:
            setattr(dist, name, reduce_scatter)
        seen["after"], seen["reduced"] = fp32_shards(run.model), sorted(seen["reduced"])
        compiled = setup(WIDE, WIDE_HPARAMS, BUDGET, corpus, seed=0, on=torch.device("cpu"),
                         execution=FSDP.model_copy(update={
                             "compilation": Compilation.COMPILED}),
                         ranks=ranks, sharded=True)
        seen["blocks_compiled"] = all(block._compiled_call_impl is not None
                                      for block in compiled.model.blocks)
        seen["root_eager"] = (compiled.forward is compiled.model
                              and compiled.model._compiled_call_impl is None)
        return seen

    return run_together(Ranks.current(), inspect)

def _run_timeout() -> float:
    """The collective timeout of a run's own process group, in seconds."""
    import torch

    from hptransfer.training.ranks import Ranks, run_together

    return run_together(Ranks.current(), lambda ranks: ranks.group._get_backend(
        torch.device("cpu")).options._timeout.total_seconds())


def _cases(rank: int, workers: int, corpus, out: str) -> dict[str, object]:
    """What one rank of the ``ranks`` job trains: each case's record JSON or error."""
    results: dict[str, object] = {}
    results["init"] = {model: _sharded_init(model) for model in ("builtin", *HF_MODELS)}
    results["run_timeout"] = _run_timeout()
    results["failing"] = _failing_runs(rank, workers, corpus)
    try:
        train(SPEC, HParams(batch_size=3), BUDGET, corpus, threads=1)
    except ValueError as error:
        results["indivisible"] = str(error)
    results["plain"] = train(SPEC, HPARAMS, BUDGET, corpus, threads=1).model_dump_json()
    seen: list = []
    pruned = train(SPEC, HPARAMS, BUDGET, corpus, threads=1,
                   on_eval=_stop_at_second_eval(seen))
    results["pruned"] = pruned.model_dump_json()
    results["pruned_callbacks"] = len(seen)
    results["diverged"] = train(SPEC, DIVERGING, Budget(steps=40, eval_every=5), corpus,
                                threads=1).model_dump_json()
    results["fsdp_groups"] = _groups(WIDE, Sharding.FSDP)
    results["bf16_inside"] = _bf16_sharded(corpus)
    results["fsdp_bf16"] = train(BF16, WIDE_HPARAMS, BUDGET, corpus, threads=1,
                                 execution=FSDP).model_dump_json()
    results["fsdp"] = train(WIDE, WIDE_HPARAMS, BUDGET, corpus, threads=1,
                            execution=FSDP).model_dump_json()
    for model in HF_MODELS:  # Hugging Face blocks, and GPT-2's tied embedding
        results[f"fsdp_{model}"] = train(_hf(model), WIDE_HPARAMS, BUDGET, corpus,
                                         threads=1, execution=FSDP).model_dump_json()
    # a kept checkpoint (the last one, after step 8 of 12) is what a killed run leaves;
    # training the same run again resumes from it, sharded and replicated
    for sharding in Sharding:
        saving = Execution(sharding=sharding, checkpoint=Checkpointing(
            folder=Path(out, sharding.value), every_steps=4, keep=True))
        train(WIDE, WIDE_HPARAMS, BUDGET, corpus, threads=1, execution=saving)
        results[f"{sharding.value}_resumed"] = train(
            WIDE, WIDE_HPARAMS, BUDGET, corpus, threads=1,
            execution=saving).model_dump_json()
    return results


def _job(rank: int, workers: int, body, rendezvous: str, corpus_path: str, out: str) -> None:
    """One rank of a gloo job of ``workers`` processes: ``body(rank, workers, corpus, out)``,
    its results written as ``out/rank<r>.json``."""
    from datetime import timedelta

    import torch.distributed as dist

    from hptransfer.data.corpus import load_corpus

    # a short collective timeout: a rank left waiting for a failed peer fails this module
    # in two minutes rather than hanging it for gloo's default thirty (each run's own group
    # has the same: run_together)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=workers,
                            timeout=timedelta(seconds=JOB_TIMEOUT_S))
    try:
        results = body(rank, workers, load_corpus(corpus_path), out)
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        # every rank's last collective done before any rank tears gloo down: a rank that
        # exits first can leave its peer's gloo threads aborting (seen once: SIGABRT,
        # 'terminate called without an active exception')
        dist.barrier()
        dist.destroy_process_group()


def _spawn(body, workers: int, folder: Path, text_file: str) -> list[dict]:
    """Each rank's results of ``body`` run by ``workers`` gloo processes (no Ray)."""
    import torch.multiprocessing as mp

    rendezvous = f"file://{folder / 'rendezvous'}"
    files = [folder / f"rank{r}.json" for r in range(workers)]
    try:
        mp.spawn(_job, args=(workers, body, rendezvous, text_file, str(folder)),
                 nprocs=workers, join=True)
    except mp.ProcessExitedException:
        # Rarely (about 1 run in 30 on a loaded 2-core machine) a rank aborts in gloo's
        # teardown after the barrier, with every result already written: what this module
        # tests is the training, so accept complete results and re-raise anything else.
        if not all(f.exists() for f in files):
            raise
    return [json.loads(f.read_text()) for f in files]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, text_file) -> list[dict]:
    """Two ranks spawned once, each training the same few tiny runs (``_cases``)."""
    return _spawn(_cases, WORKERS, tmp_path_factory.mktemp("ddp"), text_file)


def _record(result: dict, case: str) -> RunRecord:
    return RunRecord.model_validate_json(result[case])


def _same_curves(record: RunRecord, alone: RunRecord) -> None:
    assert record.status is Status.COMPLETE
    assert record.final_val_loss == pytest.approx(alone.final_val_loss, rel=TOLERANCE)
    assert [p.loss for p in record.val_curve] == pytest.approx(
        [p.loss for p in alone.val_curve], rel=TOLERANCE)
    assert [p.loss for p in record.train_curve] == pytest.approx(
        [p.loss for p in alone.train_curve], rel=TOLERANCE)


def test_two_ranks_match_one_process(ranks, tiny_corpus):
    alone = train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1)
    first, second = (_record(r, "plain") for r in ranks)
    for record in (first, second):
        _same_curves(record, alone)
        # the global batch is counted, not one rank's share
        assert (record.steps, record.tokens_seen, record.flops) == (
            alone.steps, alone.tokens_seen, alone.flops)
    # the ranks agree exactly: one averaged training loss, rank 0's validation loss
    assert first.val_curve == second.val_curve and first.train_curve == second.train_curve


def test_a_runs_group_has_the_jobs_collective_timeout(ranks):
    """Each run's own process group waits in a collective as long as the job's group was
    told to (_job: 120 s), not torch's default for a new group (30 minutes on gloo)."""
    assert [result["run_timeout"] for result in ranks] == [JOB_TIMEOUT_S] * WORKERS


def test_indivisible_batch_is_refused(ranks):
    for result in ranks:
        assert "batch_size 3 cannot be split evenly over 2" in result["indivisible"]


def test_ranks_stop_together(ranks):
    """on_eval runs on rank 0 only and its STOP ends every rank; a divergence seen in the
    averaged loss ends every rank at the same step."""
    pruned = [_record(r, "pruned") for r in ranks]
    assert [r.status for r in pruned] == [Status.PRUNED] * WORKERS
    assert [r.steps for r in pruned] == [8] * WORKERS
    assert [r["pruned_callbacks"] for r in ranks] == [2, 0]
    diverged = [_record(r, "diverged") for r in ranks]
    assert [r.status for r in diverged] == [Status.DIVERGED] * WORKERS
    assert diverged[0].steps == diverged[1].steps < 40
    assert diverged[0].reason == diverged[1].reason


def test_sharding_keeps_the_mup_param_groups(ranks):
    """Every rank's optimizer over its FSDP2 shards has the unsharded model's groups: the
    same per-tensor LRs, λs and εs, over the same (global) number of parameters."""
    alone = _groups(WIDE, None)
    assert len({g[0] for g in alone}) > 1  # µP at 2× base width: several LRs to keep
    for result in ranks:
        assert result["fsdp_groups"] == alone


@pytest.mark.parametrize("model", ["builtin", *HF_MODELS])
def test_sharded_training_matches_one_process(ranks, tiny_corpus, model):
    """FSDP2 on 2 gloo ranks (each holding half of every tensor) trains what one process
    trains: the losses agree within TOLERANCE, for the built-in and the Hugging Face family."""
    case, spec = ("fsdp", WIDE) if model == "builtin" else (f"fsdp_{model}", _hf(model))
    alone = train(spec, WIDE_HPARAMS, BUDGET, tiny_corpus, threads=1)
    first, second = (_record(r, case) for r in ranks)
    for record in (first, second):
        _same_curves(record, alone)
    assert first.val_curve == second.val_curve


def test_bf16_sharded_runs_compute_in_bf16_and_keep_fp32_weights(ranks, tiny_corpus):
    """bf16 under FSDP2 (MixedPrecisionPolicy, as torchtitan): each block computes with its
    weights all-gathered in bf16, reduce-scatters its gradients in fp32, and every
    parameter (what the optimizer updates and a checkpoint saves) stays an fp32 shard; the
    run trains on gloo and its losses stay within BF16_TOLERANCE of the bf16 run in one
    process (autocast, fp32 weights)."""
    alone = train(BF16, WIDE_HPARAMS, BUDGET, tiny_corpus, threads=1)
    records = [_record(r, "fsdp_bf16") for r in ranks]
    for result, record in zip(ranks, records, strict=True):
        inside = result["bf16_inside"]
        assert (inside["compute"], inside["inputs"]) == ("torch.bfloat16", "torch.bfloat16")
        assert inside["reduced"] == ["torch.float32"]
        assert inside["before"] and inside["after"]
        assert record.status is Status.COMPLETE
        assert [p.loss for p in record.val_curve] == pytest.approx(
            [p.loss for p in alone.val_curve], rel=BF16_TOLERANCE)
        assert [p.loss for p in record.train_curve] == pytest.approx(
            [p.loss for p in alone.train_curve], rel=BF16_TOLERANCE)
    assert records[0].val_curve == records[1].val_curve
    assert ranks[0]["bf16_inside"]["loss"] == records[0].train_curve[0].loss


def test_a_compiled_sharded_run_compiles_each_block_not_the_root(ranks):
    """Compiled and sharded, setup compiles each block in place (torchtitan's
    apply_compile) and leaves the root, which the step calls, eager: FSDP2's hooks run
    between compiled blocks instead of breaking one graph at every unit."""
    for result in ranks:
        assert result["bf16_inside"]["blocks_compiled"]
        assert result["bf16_inside"]["root_eager"]


@pytest.mark.parametrize("sharding", list(Sharding))
def test_a_distributed_run_resumes_from_its_checkpoint(ranks, tiny_corpus, sharding):
    """Resumed at step 8 from its checkpoint (each rank's shards when sharded, the
    replicated tensors written once when replicated), the run ends as the one process's."""
    alone = train(WIDE, WIDE_HPARAMS, BUDGET, tiny_corpus, threads=1)
    for result in ranks:
        record = _record(result, f"{sharding.value}_resumed")
        _same_curves(record, alone)
        assert record.resumed_at == (8,)


@pytest.mark.parametrize("model", ["builtin", *HF_MODELS])
def test_sharded_build_from_meta_is_the_unsharded_init(ranks, model):
    """Built on the meta device, sharded, materialized with to_empty and initialised: every
    parameter gathered from the two ranks' shards is the unsharded build's to the bit (µP
    init from the seed, then the readout's τ), buffers included, and each rank holds half
    of the parameter bytes (FSDP2's padding included)."""
    for result in ranks:
        init = result["init"][model]
        assert init["names"] and init["buffers_equal"] and init["readout_scaled"]
        assert init["parameter_difference"] == 0.0
        assert init["local_bytes"] == init["expected_bytes"]
        assert init["local_bytes"] <= init["whole_bytes"] / WORKERS + 4 * 1024


def _compiled(rank: int, workers: int, corpus, out: str) -> dict[str, object]:
    from hptransfer.training.execution import Compilation

    return {compilation.value: train(WIDE, WIDE_HPARAMS, BUDGET, corpus, threads=1,
                                     execution=FSDP.model_copy(update={
                                         "compilation": compilation})).model_dump_json()
            for compilation in Compilation}


@pytest.mark.slow
def test_a_compiled_sharded_run_trains_what_the_eager_one_trains(tmp_path, text_file):
    """2 gloo ranks, FSDP2, each block compiled (inductor on the CPU: about 90 s of
    compiling on a loaded 2-core machine, hence slow): the losses are the eager sharded
    run's within TOLERANCE (measured: 1e-7)."""
    for result in _spawn(_compiled, WORKERS, tmp_path, text_file):
        eager, compiled = _record(result, "eager"), _record(result, "compiled")
        _same_curves(compiled, eager)


def _failing(rank: int, workers: int, corpus, out: str) -> dict[str, object]:
    return {"failing": _failing_runs(rank, workers, corpus)}


@pytest.fixture(scope="module")
def failures(tmp_path_factory, text_file) -> list[dict]:
    """Four ranks spawned once, each training the failing runs (``_failing_runs``)."""
    return _spawn(_failing, 4, tmp_path_factory.mktemp("failures"), text_file)


@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("sharding", list(Sharding))
def test_one_failing_rank_fails_the_run_on_every_rank(request, wide_alone, workers, sharding):
    """The last of 2 or 4 ranks raises inside its model in step 3: it raises its own error,
    and every other rank, waiting in a collective with it or only with healthy ranks (gloo's
    ring all-gather), raises PeerFailed naming that error, within seconds of the raise, not
    at the collective timeout; the next run on the same ranks trains as one process does."""
    ranks = request.getfixturevalue("ranks" if workers == 2 else "failures")
    runs = [r["failing"][sharding.value] for r in ranks]
    *peers, failed = runs
    assert failed["error"] == "OSError" and failed["message"] == (
        f"injected failure on rank {workers - 1}")
    for run in peers:  # the first failure's reason, recorded once, reached every peer
        assert run["error"] == "PeerFailed"
        assert run["message"].startswith(f"rank {workers - 1} of {workers} failed: OSError: "
                                         f"injected failure on rank {workers - 1}; rank ")
    assert [run["steps_started"] for run in runs] == [FAIL_AT_STEP] * workers
    assert max(run["left"] for run in runs) - failed["raised"] < LEAVE_WITHIN  # ~1-2 s
    for run in runs:
        _same_curves(RunRecord.model_validate_json(run["next"]), wide_alone)


def test_a_failed_run_lets_go_of_its_model():
    """Why run_together keeps a failed run's traceback as text: from Python 3.11 a frame
    keeps the function it runs, and ``Module._call_impl``'s ``inner``, run for every module
    with hooks (FSDP2's), keeps the module in its closure. Clearing the frames' locals then
    leaves the model, and the process group it holds, alive as long as the error is; with
    the traceback released the model is freed, and the note still says where it failed."""
    import gc
    import sys
    import traceback
    import weakref

    import torch

    from hptransfer.training.ranks import _release_frames

    class OutOfMemory(torch.nn.Module):
        def forward(self, x):
            raise OSError("out of memory")

    model = OutOfMemory()
    model.register_forward_pre_hook(lambda module, args: None)
    alive = weakref.ref(model)
    try:
        model(torch.zeros(1))
    except OSError as raised:
        error = raised
    del model
    traceback.clear_frames(error.__traceback__)
    gc.collect()
    assert (alive() is not None) is (sys.version_info >= (3, 11))
    _release_frames(error)
    gc.collect()
    assert alive() is None and error.__traceback__ is None
    assert 'in forward\n    raise OSError("out of memory")' in error.__notes__[-1]


# ---- sharded checkpoints: killed and resumed on the same ranks, and on another number ----

STOP_AFTER = 10  # the stopped runs end here; their last checkpoint is after step 8
SAVING = Checkpointing(folder=Path("unused"), every_steps=4)  # folder set per job


def _saving(folder: Path, **extra) -> Execution:
    return Execution(sharding=Sharding.FSDP,
                     checkpoint=SAVING.model_copy(update={"folder": folder, **extra}))


def _stopped(corpus, execution: Execution) -> str:
    """Train with checkpoints until every rank fails at the start of step STOP_AFTER + 1,
    as a preempted job does, leaving the checkpoint after step 8 behind. The error raised.

    Every rank stops, not one, as when the whole job is preempted (one rank failing alone
    is test_one_failing_rank_fails_the_run_on_every_rank)."""
    from hptransfer.training import loop

    lr_factor = loop.lr_factor  # called once at the start of every step, with its index

    def failing(step, **kwargs):
        if step == STOP_AFTER:
            raise OSError("preempted")
        return lr_factor(step, **kwargs)

    loop.lr_factor = failing
    try:
        train(WIDE, WIDE_HPARAMS, BUDGET, corpus, threads=1, execution=execution)
    except Exception as error:  # noqa: BLE001 - which error each rank raised is the result
        return f"{type(error).__name__}: {error}"
    finally:
        loop.lr_factor = lr_factor
    return "none"


def _resumes(rank: int, workers: int, corpus, out: str) -> dict[str, object]:
    """One rank of a sharded job: the run trained in one go; the same run stopped after
    step 10 (:func:`_stopped`) and trained again (it resumes from its own checkpoint,
    written by as many ranks); and the run resumed from ``out/../previous``, a checkpoint of
    the same run that another number of ranks wrote. Rank 0 keeps a copy of this job's
    checkpoint for the next job (``out/kept``)."""
    import shutil
    import warnings

    results: dict[str, object] = {"alone": train(
        WIDE, WIDE_HPARAMS, BUDGET, corpus, threads=1, execution=FSDP).model_dump_json()}
    own = _saving(Path(out, "own"))
    results["stopped"] = _stopped(corpus, own)
    results["left"] = sorted(str(p.relative_to(out)) for p in Path(out, "own").glob("*/*"))
    if rank == 0:  # (the other ranks wait for rank 0 in the restore's first collective)
        shutil.copytree(Path(out, "own"), Path(out, "kept"))
    results["resumed"] = train(WIDE, WIDE_HPARAMS, BUDGET, corpus, threads=1,
                               execution=own).model_dump_json()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results["resharded"] = train(
            WIDE, WIDE_HPARAMS, BUDGET, corpus, threads=1,
            execution=_saving(Path(out).parent / "previous")).model_dump_json()
    results["warnings"] = [str(w.message) for w in caught]
    return results


@pytest.fixture(scope="module")
def resumes(tmp_path_factory, text_file, tiny_corpus) -> dict[int, list[dict]]:
    """Sharded jobs of 4 and then 2 ranks (``_resumes``), in a chain of checkpoints of the
    same run after step 8: written by this one process and resumed by the 4 ranks, kept by
    the 4 ranks and resumed by the 2, kept by the 2 and resumed here by one process."""
    import shutil

    root = tmp_path_factory.mktemp("resumes")
    train(WIDE, WIDE_HPARAMS, BUDGET, tiny_corpus, threads=1, execution=Execution(
        checkpoint=SAVING.model_copy(update={"folder": root / "previous", "keep": True})))
    jobs = {}
    for workers in (4, 2):
        folder = root / f"job{workers}"
        folder.mkdir()
        jobs[workers] = _spawn(_resumes, workers, folder, text_file)
        shutil.rmtree(root / "previous")
        shutil.copytree(folder / "kept", root / "previous")
    return {**jobs, 1: [{"previous": str(root / "previous")}]}


@pytest.fixture(scope="module")
def wide_alone(tiny_corpus) -> RunRecord:
    return train(WIDE, WIDE_HPARAMS, BUDGET, tiny_corpus, threads=1)


@pytest.mark.parametrize("workers", [2, 4])
def test_a_stopped_sharded_run_resumes_to_exactly_the_same_losses(resumes, workers):
    """N gloo ranks, FSDP2: a run stopped after step 10 leaves a sharded checkpoint after
    step 8 (each rank's file, the index, the manifest); trained again on N ranks it resumes
    there and ends with the losses of the run trained in one go, bit for bit, on every
    rank."""
    for result in resumes[workers]:
        assert result["stopped"] == "OSError: preempted"
        alone, resumed = _record(result, "alone"), _record(result, "resumed")
        assert resumed.resumed_at == (8,) and alone.resumed_at == ()
        assert resumed.status is Status.COMPLETE
        assert resumed.val_curve == alone.val_curve  # exactly: no tolerance
        assert resumed.train_curve == alone.train_curve
        assert resumed.final_val_loss == alone.final_val_loss
    run = resumes[workers][0]["left"][0].split("/")[1]
    assert resumes[workers][0]["left"] == [f"own/{run}/step-00000008"]
    files = {p.name for p in Path(resumes[1][0]["previous"]).parent.glob(
        f"job{workers}/kept/{run}/step-00000008/*")}
    assert {f"__{r}_0.distcp" for r in range(workers)} | {"manifest.json"} <= files


@pytest.mark.parametrize("workers, written_by", [(4, 1), (2, 4), (1, 2)])
def test_a_sharded_checkpoint_resumes_on_another_number_of_ranks(
        resumes, wide_alone, tiny_corpus, workers, written_by):
    """Resharded: a checkpoint written by one process resumes on 4 FSDP2 ranks, one of 4
    ranks on 2, one of 2 ranks in one unsharded process. Each run takes over at step 8 and
    ends with the losses of the run trained in one go up to float rounding (the global batch
    is the same, each rank's slice of it is not), and rank 0 warns that it was resharded."""
    if workers == 1:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            records = [train(WIDE, WIDE_HPARAMS, BUDGET, tiny_corpus, threads=1,
                             execution=Execution(checkpoint=SAVING.model_copy(update={
                                 "folder": Path(resumes[1][0]["previous"])})))]
        said = [[str(w.message) for w in caught]]
    else:
        records = [_record(result, "resharded") for result in resumes[workers]]
        said = [result["warnings"] for result in resumes[workers]]
    for record in records:
        assert record.resumed_at == (8,)
        _same_curves(record, wide_alone)
    assert any(f"written by {written_by} rank(s) and this run has {workers}" in message
               for message in said[0])
    assert not any("written by" in message for rank in said[1:] for message in rank)


@pytest.mark.parametrize("workers, gpus, refused", [
    (2, 0.5, True), (4, 1.5, True), (1, 0.25, False), (2, 1.0, False), (2, 0.0, False)])
def test_nccl_ranks_never_share_a_card(workers, gpus, refused):
    """A fraction of a GPU per worker for a job of two workers or more is refused before
    anything is submitted: Ray could place two ranks on one card, which NCCL refuses."""
    from hptransfer.backends.ray_train import check_gpu_share

    if refused:
        with pytest.raises(ValueError, match="NCCL cannot run two ranks of one job on the "
                                             "same GPU"):
            check_gpu_share(workers, gpus)
    else:
        check_gpu_share(workers, gpus)


def test_fsdp_needs_torch_2_6(monkeypatch):
    """Without FSDP2's public fully_shard (torch 2.5) sharding is refused with the fix."""
    import builtins

    from hptransfer.models.registry import build_model
    from hptransfer.models.sharding import shard_blocks

    real_import = builtins.__import__

    def old_torch(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "torch.distributed.fsdp" and "fully_shard" in (fromlist or ()):
            raise ImportError("cannot import name 'fully_shard'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", old_torch)
    with pytest.raises(ValueError, match=r"needs FSDP2 from torch 2.6 .*--sharding replicate"):
        shard_blocks(build_model(SPEC), mesh=None, blocks=None)
