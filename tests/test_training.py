"""The training loop: determinism, early stops, callbacks, accounting, precision, and every
architecture and optimizer option taking effect."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hptransfer.budget import Budget
from hptransfer.hparams import EpsRule, HParams, Optimizer, Schedule
from hptransfer.models.registry import role_table
from hptransfer.models.transformer import Transformer
from hptransfer.mup.roles import Role
from hptransfer.mup.tensors import declared_parameters, param_groups
from hptransfer.record import RunRecord, Status, Verdict
from hptransfer.spec import Activation, ModelSpec, NormGain, ReadoutInit
from hptransfer.training.loop import token_loss, train
from hptransfer.training.optimizer import Lion, build_optimizer
from hptransfer.training.schedule import lr_factor

BUDGET = Budget(steps=12, eval_every=4, eval_tokens=1024)


def test_same_seed_same_run_bit_for_bit(tiny_spec, tiny_corpus):
    hparams = HParams(batch_size=4)
    a = train(tiny_spec, hparams, BUDGET, tiny_corpus, seed=7)
    b = train(tiny_spec, hparams, BUDGET, tiny_corpus, seed=7)
    c = train(tiny_spec, hparams, BUDGET, tiny_corpus, seed=8)
    assert a.train_curve == b.train_curve and a.val_curve == b.val_curve
    assert a.train_curve != c.train_curve


def test_record_accounting(tiny_spec, tiny_corpus):
    hparams = HParams(batch_size=4)
    record = train(tiny_spec, hparams, BUDGET, tiny_corpus)
    assert record.status is Status.COMPLETE and record.ok
    assert [p.step for p in record.val_curve] == [4, 8, 12]
    assert record.final_val_loss == record.val_curve[-1].loss
    assert record.tokens_seen == 12 * 4 * tiny_spec.seq_len
    assert record.flops == pytest.approx(tiny_spec.flops_per_token() * record.tokens_seen)
    assert record.tokens_per_s > 0 and record.wall_time_s > 0
    assert record.timed_steps == 11  # all but the warm-up step
    assert record.peak_memory_bytes is None  # no per-run figure on the CPU
    assert record.corpus["content_hash"].startswith("sha256:")
    assert record.spec.precision.value in record.model_dump_json()
    assert RunRecord.model_validate_json(record.model_dump_json()) == record


def test_throughput_leaves_out_each_attempt_s_warm_up():
    from hptransfer.training.execution import Compilation
    from hptransfer.training.loop import _WARMUP_STEPS, _StepClock

    assert _WARMUP_STEPS == {Compilation.EAGER: 1, Compilation.COMPILED: 2}
    clock = _StepClock(2)
    for seconds in (30.0, 2.0, 1.0, 1.0, 2.0):  # a compile, a recompile, three steps
        clock.add(seconds)
    # 3 timed steps × 100 tokens in 4 s; the warm-up's 32 s are left out
    assert clock.throughput(5, 100) == (75.0, 3) and clock.seconds == 36.0
    # a resumed attempt warms up again and adds to the saved totals
    again = _StepClock(2, seconds=clock.seconds, timed_steps=3, timed_seconds=4.0)
    for seconds in (10.0, 3.0, 1.0):
        again.add(seconds)
    assert again.throughput(8, 100) == (80.0, 4)
    # no step past a warm-up: every step counts (the record says so by timed_steps)
    short = _StepClock(2)
    short.add(4.0)
    assert short.throughput(1, 100) == (25.0, 1)


def test_budget_in_tokens(tiny_spec, tiny_corpus):
    record = train(tiny_spec, HParams(batch_size=4),
                   Budget(tokens=5 * 4 * tiny_spec.seq_len, eval_every=100, eval_tokens=512),
                   tiny_corpus)
    assert record.steps == 5 and len(record.val_curve) == 1


def test_training_learns(tiny_spec, tiny_corpus):
    record = train(tiny_spec, HParams(batch_size=8, lr=2.0**-5),
                   Budget(steps=60, eval_every=20, eval_tokens=2048), tiny_corpus)
    losses = [p.loss for p in record.val_curve]
    assert losses[-1] < losses[0] < 5.6  # ln 256 ≈ 5.55 is the uniform guess
    assert losses[-1] < 3.5


def test_huge_lr_is_recorded_as_diverged(tiny_spec, tiny_corpus):
    record = train(tiny_spec, HParams(batch_size=4, lr=8.0, warmup_fraction=0.0,
                                      grad_clip=0.0), Budget(steps=40, eval_every=5), tiny_corpus)
    assert record.status is Status.DIVERGED
    assert record.final_val_loss is None
    assert "loss" in record.reason and record.steps < 40


def test_on_eval_can_stop_the_run(tiny_spec, tiny_corpus):
    seen = []

    def stop_at_second(point):
        seen.append(point)
        return Verdict.STOP if len(seen) == 2 else None

    record = train(tiny_spec, HParams(batch_size=4), BUDGET, tiny_corpus,
                   on_eval=stop_at_second)
    assert record.status is Status.PRUNED and record.steps == 8
    assert [p.step for p in seen] == [4, 8]


def test_vocab_smaller_than_corpus_is_refused(tiny_corpus):
    spec = ModelSpec(width=32, depth=1, seq_len=32, vocab=100)
    with pytest.raises(ValueError, match="vocab"):
        train(spec, HParams(batch_size=2), BUDGET, tiny_corpus)


def test_bf16_autocast_matches_fp32(tiny_corpus):
    """bf16 autocast (fp32 master weights) reaches the fp32 validation loss on a short run."""
    base = dict(width=32, depth=2, seq_len=32, base_width=32)
    hparams, budget = HParams(batch_size=8), Budget(steps=30, eval_every=30, eval_tokens=2048)
    fp32 = train(ModelSpec(**base, precision="fp32"), hparams, budget, tiny_corpus)
    bf16 = train(ModelSpec(**base, precision="bf16"), hparams, budget, tiny_corpus)
    assert bf16.spec.precision.value == "bf16"
    assert fp32.final_val_loss < 4.0  # it learned something
    assert bf16.final_val_loss == pytest.approx(fp32.final_val_loss, rel=0.02)


# ---- every option takes effect: compared with the default run on the same seed and budget ---

SHORT = Budget(steps=6, eval_every=6, eval_tokens=512)
ARCH_HPARAMS = HParams(batch_size=4, lr=2.0**-6)
# every option moves some loss of its 6-step run by about 1e-2 or more; 1e-3 is far above noise
# (same seed, same thread: an option without effect reproduces the default bit for bit)
MOVED = 1e-3


@pytest.fixture(scope="module")
def short_run(tiny_corpus):
    """Train (spec, hparams) for the SHORT budget, once per module: the reference runs the
    option tests compare with are trained once and shared."""
    runs: dict[tuple[ModelSpec, HParams], RunRecord] = {}

    def run(spec: ModelSpec, hparams: HParams) -> RunRecord:
        if (spec, hparams) not in runs:
            runs[spec, hparams] = train(spec, hparams, SHORT, tiny_corpus)
        return runs[spec, hparams]

    return run


def losses(record: RunRecord) -> list[float]:
    return [point.loss for point in record.train_curve + record.val_curve]


def shift(a: RunRecord, b: RunRecord) -> float:
    """The largest difference between two runs' training and validation losses."""
    return max(abs(x - y) for x, y in zip(losses(a), losses(b), strict=True))


def arch_spec(**options) -> ModelSpec:
    return ModelSpec(width=32, depth=1, seq_len=32, **options)  # m = 32 / 128 = 1/4


def group_lrs(model, spec: ModelSpec) -> list[float]:
    groups = param_groups(model, role_table(spec), spec, ARCH_HPARAMS)
    return sorted(group["lr"] for group in groups)


def gradients(model) -> dict[str, torch.Tensor | None]:
    """Each parameter's gradient of the loss on a few random windows (None: unused)."""
    batch = torch.randint(0, model.spec.vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    token_loss(model, batch).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def trained(model, names) -> bool:
    """Whether every parameter in ``names`` gets a non-zero gradient: it is computed with."""
    grads = gradients(model)
    return all(grads[n] is not None and bool(grads[n].ne(0).any()) for n in names)


def check_mlp_activation(model, record, default) -> None:
    """The MLP computes the activation it was asked for (SwiGLU: silu(gate) · value)."""
    expected = {
        Activation.GELU: F.gelu,
        Activation.SQUARED_RELU: lambda h: F.relu(h).square(),
        Activation.SWIGLU: lambda h: F.silu(h.chunk(2, dim=-1)[0]) * h.chunk(2, dim=-1)[1],
    }[model.spec.activation]
    mlp = model.blocks[0].mlp
    x = torch.randn(2, 3, model.spec.width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = F.linear(expected(F.linear(x, mlp.w_in)), mlp.w_out)
        assert torch.allclose(mlp(x), reference, atol=1e-6)
        if model.spec.activation is not Activation.SWIGLU:
            assert not torch.allclose(mlp(x), F.linear(F.relu(F.linear(x, mlp.w_in)),
                                                       mlp.w_out), atol=1e-4)


def check_swiglu(model, record, default) -> None:
    spec = model.spec
    assert all(b.mlp.w_in.shape == (2 * spec.mlp_width, spec.width) for b in model.blocks)
    check_mlp_activation(model, record, default)


def check_multi_query(model, record, default) -> None:
    spec = model.spec
    assert spec.kv_head_count == 1 < spec.heads
    assert all(b.attn.wkv.shape == (2 * spec.head_dim, spec.width) for b in model.blocks)


def check_gains(model, record, default) -> None:
    """Gains on every norm (two per block and the final one), initialised to one and used:
    the model computes at init exactly what the gainless default does."""
    spec = model.spec
    shape = (spec.width,) if spec.norm_gain is NormGain.VECTOR else (1,)
    gains = {n: p for n, p in model.named_parameters() if n.endswith(".gain")}
    assert len(gains) == 2 * spec.depth + 1, sorted(gains)
    assert all(p.shape == shape and bool(p.eq(1).all()) for p in gains.values())
    assert trained(model, gains)
    assert record.train_curve[0].loss == pytest.approx(default.train_curve[0].loss, rel=1e-6)


def check_biases(model, record, default) -> None:
    """Biases on q, k/v, attention out and both MLP projections, initialised to zero and
    used: the model computes at init exactly what the unbiased default does."""
    expected = {f"blocks.{i}.{name}" for i in range(model.spec.depth)
                for name in ("attn.bq", "attn.bkv", "attn.bo", "mlp.b_in", "mlp.b_out")}
    biases = {n: p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1][0] == "b"}
    assert set(biases) == expected
    assert all(bool(p.eq(0).all()) for p in biases.values())
    assert trained(model, expected)
    assert record.train_curve[0].loss == pytest.approx(default.train_curve[0].loss, rel=1e-6)


def check_embedding_norm(model, record, default) -> None:
    tokens = torch.arange(model.spec.vocab)
    with torch.no_grad():
        rms = model.embed_norm(model.embed(tokens)).square().mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-5)


def check_zero_query(model, record, default) -> None:
    for block in model.blocks:
        assert bool(block.attn.wq.eq(0).all())
        assert not bool(block.attn.wkv.eq(0).any())


def check_zero_readout(model, record, default) -> None:
    """A zero readout gives uniform logits: the first loss is ln V exactly."""
    assert bool(model.readout.weight.eq(0).all())
    assert record.train_curve[0].loss == pytest.approx(math.log(model.spec.vocab), rel=1e-6)


def check_mup_abs(model, record, default) -> None:
    """α / fan_in per matrix: M = 32 for the M → · matrices and the readout, F = 128 for
    the MLP out; the embedding keeps α (the default relative rule: α and α / m = 4α)."""
    alpha = ARCH_HPARAMS.lr
    assert group_lrs(model, model.spec) == [alpha / 128, alpha / 32, alpha]
    default_model = Transformer(arch_spec())
    assert group_lrs(default_model, default_model.spec) == [alpha, 4 * alpha]


def check_sp(model, record, default) -> None:
    """One global LR, attention 1/√D, readout std 1/√M."""
    spec = model.spec
    assert group_lrs(model, spec) == [ARCH_HPARAMS.lr]
    assert model.blocks[0].attn.scale == 1 / math.sqrt(spec.head_dim)
    assert spec.readout_init is ReadoutInit.SP
    std = model.readout.weight.std().item()  # 8192 draws: within a few % of the init std
    assert std == pytest.approx(1 / math.sqrt(spec.width), rel=0.05)


def option(options: dict[str, str], parameters: int, check):
    ((key, value),) = options.items()
    return pytest.param(options, parameters, check, id=f"{key}={value}")


@pytest.mark.parametrize("options, parameters, check", [
    # parameters: how many more trainable parameters than the default (M = 32, F = 128,
    # one block, D = 16, two heads)
    option({"activation": "swiglu"}, 128 * 32, check_swiglu),  # MLP in-projection is 2F wide
    option({"activation": "squared-relu"}, 0, check_mlp_activation),
    option({"activation": "gelu"}, 0, check_mlp_activation),
    option({"kv_heads": "multi-query"}, -(2 * 16) * 32, check_multi_query),  # 1 k/v head, not 2
    option({"norm_gain": "vector"}, 3 * 32, check_gains),
    option({"norm_gain": "scalar"}, 3, check_gains),
    option({"bias": "projections"}, 32 + 64 + 32 + 128 + 32, check_biases),  # q kv o in out
    option({"embedding_norm": "rms"}, 0, check_embedding_norm),
    option({"query_init": "zero"}, 0, check_zero_query),
    option({"readout_init": "zero"}, 0, check_zero_readout),
    option({"param": "mup-abs"}, 0, check_mup_abs),
    option({"param": "sp"}, 0, check_sp),
])
def test_every_architecture_option_takes_effect(short_run, options, parameters, check):
    """Each option builds the model it promises, counts its parameters right, trains, and
    trains differently from the default spec on the same seed and budget."""
    spec, default_spec = arch_spec(**options), arch_spec()
    model, default_model = Transformer(spec), Transformer(default_spec)
    count = sum(p.numel() for p in model.parameters())
    default_count = sum(p.numel() for p in default_model.parameters())
    assert count == spec.parameter_count(embedding=True)
    assert default_count == default_spec.parameter_count(embedding=True) == 28672
    assert count - default_count == parameters

    record, default = short_run(spec, ARCH_HPARAMS), short_run(default_spec, ARCH_HPARAMS)
    assert record.status is Status.COMPLETE
    # it learns: below where it started (the absolute rule's α/fan_in at this α is tiny, and
    # its readout at m = ¼ starts 4× SP's, so "below uniform" is not the bar for every option)
    assert record.final_val_loss < record.train_curve[0].loss
    assert shift(record, default) > MOVED, (losses(record), losses(default))
    check(model, record, default)


def test_lion_takes_effect(tiny_spec, short_run):
    """Lion is the optimizer built, and it trains differently from AdamW at the same LR."""
    hparams = HParams(batch_size=4, optimizer="lion", lr=2.0**-10)
    optimizer = build_optimizer(Transformer(tiny_spec), role_table(tiny_spec), tiny_spec, hparams)
    assert isinstance(optimizer, Lion)
    assert all("eps" not in group for group in optimizer.param_groups)
    adamw = hparams.model_copy(update={"optimizer": Optimizer.ADAMW})
    assert not isinstance(build_optimizer(Transformer(tiny_spec), role_table(tiny_spec), tiny_spec,
                                          adamw), Lion)

    record = short_run(tiny_spec, hparams)
    assert record.status is Status.COMPLETE
    assert shift(record, short_run(tiny_spec, adamw)) > MOVED


def test_cosine_schedule_takes_effect(tiny_spec, short_run):
    """Cosine decay is above linear in the first half of the decay, below it in the second,
    equal at the peak, the middle and the end; the run trains differently."""
    cosine, linear = HParams(batch_size=4, schedule="cosine"), HParams(batch_size=4)
    steps = SHORT.steps  # warmup 1 step, then decay over steps 1..5 (middle: step 3)
    factors = {h.schedule: [lr_factor(t, total_steps=steps, hparams=h) for t in range(steps)]
               for h in (cosine, linear)}
    cos, lin = factors[Schedule.COSINE], factors[Schedule.LINEAR]
    assert cos[2] > lin[2] + 0.1 and cos[4] < lin[4] - 0.1
    for t in (0, 1, 3, 5):
        assert cos[t] == pytest.approx(lin[t])

    record = short_run(tiny_spec, cosine)
    assert record.status is Status.COMPLETE
    assert shift(record, short_run(tiny_spec, linear)) > MOVED


def test_scaled_eps_and_weight_decay_take_effect(tiny_spec, short_run):
    """Scaled ε follows the LR multiplier: at m = 2 the hidden and readout groups get ε / 2,
    the embedding ε (a constant ε gives every group ε); at m = 1 the two rules agree. The
    weight decay reaches every matrix (independent λ: λ / lr of the tensor)."""
    scaled = HParams(batch_size=4, eps_rule="scaled", weight_decay=1e-4)
    constant = scaled.model_copy(update={"eps_rule": EpsRule.CONSTANT})
    wide = tiny_spec.model_copy(update={"width": 64})
    assert wide.width_multiplier == 2.0
    model = Transformer(wide)
    group_of = {id(p): group for group in param_groups(model, role_table(wide), wide, scaled)
                for p in group["params"]}
    constant_groups = param_groups(model, role_table(wide), wide, constant)
    assert {group["eps"] for group in constant_groups} == {constant.eps}
    for _, parameter, declaration in declared_parameters(model):
        group = group_of[id(parameter)]
        assert declaration.role.is_matrix and group["weight_decay"] > 0
        if declaration.role is Role.EMBEDDING:
            assert group["eps"] == scaled.eps
            assert group["weight_decay"] == pytest.approx(1e-4 / scaled.lr)
        else:
            assert group["eps"] == scaled.eps / 2 and group["eps"] != constant.eps
            assert group["weight_decay"] == pytest.approx(1e-4 / (scaled.lr / 2))
    base = Transformer(tiny_spec)
    roles = role_table(tiny_spec)
    assert ([group["eps"] for group in param_groups(base, roles, tiny_spec, scaled)]
            == [group["eps"] for group in param_groups(base, roles, tiny_spec, constant)])

    record = short_run(tiny_spec, scaled)
    assert record.status is Status.COMPLETE
    # λ = 1e-4 decays the weights by ~5e-4 over the run: the losses move by ~1.6e-4
    assert shift(record, short_run(tiny_spec, HParams(batch_size=4))) > 2e-5


def test_device_is_checked_before_any_work(tiny_spec, tiny_corpus):
    import torch

    from hptransfer.training.device import resolve_device

    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="cpu or cuda"):
        resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            train(tiny_spec, HParams(batch_size=4), Budget(steps=1), tiny_corpus,
                  device="cuda")


def test_a_card_index_is_checked_against_the_visible_cards(monkeypatch):
    """cuda:N past the cards CUDA_VISIBLE_DEVICES leaves is refused with the range, before
    CUDA's 'invalid device ordinal' deep in the run (simulated: this machine has no GPU)."""
    from hptransfer.training.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"sees 2 CUDA card\(s\) \(cuda:0 to cuda:1; "
                                         r"CUDA_VISIBLE_DEVICES=4,5\)"):
        resolve_device("cuda:2")


def test_a_failed_run_frees_its_model(tiny_spec, tiny_corpus, monkeypatch):
    """A run that raises mid-training leaves nothing of itself alive while its error is
    still held (a study recording it): its model, gradients and optimizer state are freed
    before train() raises (on a GPU, its cached blocks are handed back too)."""
    import gc
    import weakref

    from hptransfer.training import loop

    made, build = [], loop.build_optimizer

    def remembered(model, *args, **kwargs):
        made.append(weakref.ref(model))
        return build(model, *args, **kwargs)

    def failing(model, batch, *, check=False):
        raise OSError("injected failure")

    monkeypatch.setattr(loop, "build_optimizer", remembered)
    monkeypatch.setattr(loop, "token_loss", failing)
    with pytest.raises(OSError, match="injected") as caught:
        train(tiny_spec, HParams(batch_size=4), Budget(steps=2), tiny_corpus, threads=1)
    assert caught.value is not None and made
    gc.collect()  # (nothing needed: train() collected; this only rules out timing)
    assert made[0]() is None


def test_evaluation_of_a_large_vocabulary_in_parts_gives_the_same_loss(monkeypatch):
    """evaluate() bounds the logits of one forward (a 100k vocabulary's batch is GBs): the
    parts' token-weighted mean is the whole batch's loss."""
    from hptransfer.training import loop

    spec = ModelSpec(width=32, depth=1, head_dim=16, seq_len=16, base_width=32, vocab=1000)
    model = Transformer(spec).eval()
    batch = torch.randint(0, 1000, (8, 17), generator=torch.Generator().manual_seed(0))
    whole = loop.evaluate(model, [batch], spec)
    monkeypatch.setattr(loop, "_EVAL_LOGITS_BYTES", 3 * 16 * 1000 * 4)  # 3 rows per forward
    parts = loop.evaluate(model, [batch], spec)
    assert parts == pytest.approx(whole, rel=1e-6)
    assert whole == pytest.approx(token_loss(model, batch).item(), rel=1e-6)


# ---- the loop's parts apart: setup, then one step (docs: hptransfer.training.loop) ----

def _setup(spec, hparams, corpus, execution=None):
    """The run's setup on one rank, on the CPU, as train() makes it."""
    from hptransfer.training.execution import Execution
    from hptransfer.training.loop import setup
    from hptransfer.training.ranks import Ranks

    torch.set_num_threads(1)  # as train(threads=1): the same kernels, the same bits
    return setup(spec, hparams, BUDGET, corpus, seed=7, on=torch.device("cpu"),
                 execution=execution or Execution(), ranks=Ranks(0, 1), sharded=False)


def test_setup_builds_the_family_s_init(tiny_spec, tiny_corpus):
    """One rank, replicated: the model setup builds is the family's build from the seed
    with the readout's τ applied (here 2), nothing trained yet, the schedule's peak LRs
    read from the optimizer, the validation batches and the plan of the budget."""
    from hptransfer.models.registry import build_model

    hparams = HParams(batch_size=4, readout_mult=2.0)
    run = _setup(tiny_spec, hparams, tiny_corpus)
    built = build_model(tiny_spec, seed=7, hparams=hparams)
    plain = build_model(tiny_spec, seed=7)
    setup_weights = dict(run.model.named_parameters())
    assert list(setup_weights) == [name for name, _ in built.named_parameters()]
    assert all(torch.equal(setup_weights[name], p) for name, p in built.named_parameters())
    assert not all(torch.equal(setup_weights[name], p) for name, p in plain.named_parameters())
    assert run.forward is run.model  # one rank, eager: nothing wraps it
    assert run.peak_lrs == [g["lr"] for g in run.optimizer.param_groups]
    assert (run.planned, run.tokens_per_step) == (12, 4 * tiny_spec.seq_len)
    assert run.validation and run.saver is None
    assert (run.progress.step, run.progress.train_losses, run.progress.resumed_at) == (0, [], ())


def test_one_step_is_the_run_s_first(tiny_spec, tiny_corpus):
    """step() alone does what the loop's first step does: it moves every weight and returns
    the finite training loss the whole run records first, to the bit."""
    hparams = HParams(batch_size=4)
    whole = train(tiny_spec, hparams, BUDGET, tiny_corpus, seed=7, threads=1)
    from hptransfer.training.loop import step

    run = _setup(tiny_spec, hparams, tiny_corpus)
    before = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    loss = step(run, 0)
    assert math.isfinite(loss) and loss == whole.train_curve[0].loss
    assert all(not torch.equal(before[name], p) for name, p in run.model.named_parameters())
    assert all(p.grad is None for p in run.model.parameters())  # zeroed for the next step
    assert run.progress.step == 0  # the loop counts steps, not step()


def test_setup_resumes_from_the_run_s_checkpoint(tmp_path, tiny_spec, tiny_corpus):
    """With a checkpoint after step 8 (kept from a whole run), setup restores the loop's
    progress there, and the next step() is the whole run's step 9, to the bit."""
    from hptransfer.training.execution import Checkpointing, Execution
    from hptransfer.training.loop import step

    hparams = HParams(batch_size=4, weight_decay=0.1)
    saving = Execution(checkpoint=Checkpointing(folder=tmp_path, every_steps=4, keep=True))
    whole = train(tiny_spec, hparams, BUDGET, tiny_corpus, seed=7, threads=1,
                  execution=saving)
    run = _setup(tiny_spec, hparams, tiny_corpus, saving)
    progress = run.progress
    assert (progress.step, progress.resumed_at) == (8, (8,))
    assert progress.train_losses == [p.loss for p in whole.train_curve[:8]]
    assert progress.val_curve == list(whole.val_curve[:2])
    assert step(run, 8) == whole.train_curve[8].loss
