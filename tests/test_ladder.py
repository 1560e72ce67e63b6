"""The ladder search (study/ladder.py): its rounds on synthetic bowls (no training), and the
real thing: the same trials with one process or two, a kill and resume, a follower without
a planner, the command line, and the seed noise and regret it feeds the prediction."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from processes import freeze_outside_a_transaction
from tiny import lr_only_toml, run_cli

from hptransfer.budget import Budget
from hptransfer.errors import StudyError
from hptransfer.hparams import MULTIPLIERS, HParams, WeightDecay
from hptransfer.space import SearchSpace
from hptransfer.spec import ModelSpec
from hptransfer.study.config import StudyConfig
from hptransfer.study.ladder import Ladder, Step, prior_from
from hptransfer.study.optimum import seed_noise
from hptransfer.study.records import load_trials
from hptransfer.study.runner import auto_placement
from hptransfer.study.schema import TrialRecord, TrialStatus
from hptransfer.study.search import Pruning, SamplerKind, WarmStart
from hptransfer.study.tune import tune
from hptransfer.study.worker import LocalRunner

# ---- the planner on synthetic bowls -----------------------------------------------------------


def _config(*, weight_decay=None, batch_sizes=None, rule=WeightDecay.INDEPENDENT, seed=0,
            lr=(2.0**-12, 2.0**-2), multipliers=None) -> StudyConfig:
    return StudyConfig(
        spec=ModelSpec(width=32, depth=1, head_dim=16, seq_len=32, base_width=32),
        budget=Budget(steps=4, eval_every=2, eval_tokens=1024),
        space=SearchSpace(lr=lr, weight_decay=weight_decay, batch_sizes=batch_sizes,
                          multipliers=multipliers,
                          base=HParams(batch_size=8, weight_decay_rule=rule)),
        seed=seed, corpus_hash="sha256:test")


def _bowl(optimum=-7.3, curvature=0.03, wall=None, noise=0.0, best_decay=0.0, best_batch=8,
          batch_exponent=0.5, batch_penalty=0.02):
    """loss(point): a parabola in log2 lr around ``optimum`` (relative ``curvature``) that
    moves with batch as b^``batch_exponent``, a per-seed level, deterministic per-point
    noise, a penalty away from the best weight decay and batch, and divergence above
    ``wall``."""

    def loss(code: float, seed: int, decay: float, batch: int) -> float | None:
        if wall is not None and code >= wall:
            return None
        centre = optimum + batch_exponent * math.log2(batch / 8)  # √k by default
        value = 2.5 * (1 + curvature * (code - centre) ** 2) + 0.05 * seed
        value += noise * math.sin(97.0 * code + 13.0 * seed)
        value += 0.02 * abs(math.log10(decay + 1e-5) - math.log10(best_decay + 1e-5))
        value += batch_penalty * abs(math.log2(batch / best_batch))
        return value

    return loss


def _run(ladder: Ladder, loss, width=32, max_rounds=40, multipliers=None
         ) -> list[TrialRecord]:
    """The ladder's rounds on ``loss``; ``multipliers(values)`` adds their loss."""
    rows: list[TrialRecord] = []
    for _ in range(max_rounds):
        plan = ladder.plan(rows)
        if plan.done is not None:
            return rows
        assert plan.points, plan
        for p in plan.points:
            value = loss(p.lr_code, p.seed, p.weight_decay, p.batch_size)
            if value is not None and multipliers is not None:
                value += multipliers(p.multipliers)
            rows.append(TrialRecord(
                study="s", number=len(rows), width=width,
                status=TrialStatus.COMPLETE if value is not None else TrialStatus.DIVERGED,
                hparams=HParams(lr=p.lr, weight_decay=p.weight_decay, batch_size=p.batch_size,
                                weight_decay_rule=ladder.config.space.base.weight_decay_rule,
                                **dict(zip(MULTIPLIERS, p.multipliers, strict=True))),
                final_val_loss=value, seed=p.seed, ladder=p.step.value, flops=1.0))
    raise AssertionError("the ladder did not stop")


def _codes(rows, step=None):
    return [round(math.log2(r.hparams.lr), 2) for r in rows
            if step is None or r.ladder == step.value]


def test_first_width_brackets_fits_replicates_and_stops():
    config = _config()
    ladder = Ladder(config, 32, prior=None, max_trials=24)
    rows = _run(ladder, _bowl(optimum=-7.3))
    assert _codes(rows[:3]) == [-9.0, -7.0, -5.0]  # the range's middle, ±2 octaves
    bowl = {c for c in _codes(rows) if c % 0.5 == 0}
    assert {-8.0, -7.5, -7.0, -6.5} <= bowl  # half-octave points around the optimum
    seeds = [r for r in rows if r.seed == 1]
    assert len(seeds) == 3 and all(r.ladder == "seed" for r in seeds)  # once, three LRs
    assert len(rows) < 24  # it stopped because the optimum was pinned, not at the cap
    low, high = ladder.interval(rows)
    assert low < -7.3 < high and high - low <= ladder.precision
    assert abs(ladder._centre(rows) + 7.3) < 0.15
    assert "pinned" in ladder.plan(rows).done


def test_the_cap_stops_a_width():
    ladder = Ladder(_config(), 32, prior=None, max_trials=5)
    rows = _run(ladder, _bowl())
    assert len(rows) == 5 and "cap of 5" in ladder.plan(rows).done


def test_a_later_width_starts_on_the_prior_grid_and_holds_the_flat_hparams():
    config = _config()
    first = Ladder(config, 32, prior=None, max_trials=24)
    first_rows = _run(first, _bowl(optimum=-7.3))
    prior = prior_from(config, 64, [(32, first, first_rows)])
    assert abs(prior.lr_code + 7.3) < 0.15 and prior.noise is not None
    second = Ladder(config, 64, prior=prior, max_trials=24)
    rows = _run(second, _bowl(optimum=-7.3), width=64)
    assert _codes(rows[:5]) == [-8.5, -8.0, -7.5, -7.0, -6.5] or _codes(rows[:5]) == [
        -8.0, -7.5, -7.0, -6.5, -6.0]  # half-octave grid ±1 octave of the prior
    assert all(r.seed == 0 for r in rows)  # the noise is the first width's
    assert len(rows) < len(first_rows)


def test_the_bracket_walks_to_an_optimum_far_from_the_prior():
    config = _config()
    first = Ladder(config, 32, prior=None, max_trials=24)
    first_rows = _run(first, _bowl(optimum=-7.0))
    prior = prior_from(config, 64, [(32, first, first_rows)])
    second = Ladder(config, 64, prior=prior, max_trials=24)
    rows = _run(second, _bowl(optimum=-9.5), width=64)  # SP-like: a drift of 2.5 octaves
    assert "bracket" in {r.ladder for r in rows[5:]}
    assert abs(second._centre(rows) + 9.5) < 0.2


def test_the_prior_extrapolates_the_drift_of_two_widths():
    config = _config()
    ladders = []
    for width, optimum in ((32, -6.0), (64, -7.0)):
        prior = prior_from(config, width, ladders) if ladders else None
        ladder = Ladder(config, width, prior=prior, max_trials=24)
        ladders.append((width, ladder, _run(ladder, _bowl(optimum=optimum), width=width)))
    assert abs(prior_from(config, 256, ladders).lr_code + 9.0) < 0.3  # −1 octave per doubling


def test_no_point_at_or_above_a_diverged_lr():
    ladder = Ladder(_config(), 32, prior=None, max_trials=24)
    rows = _run(ladder, _bowl(optimum=-5.8, wall=-5.0))
    diverged = [r for r in rows if r.status is TrialStatus.DIVERGED]
    assert _codes(diverged) == [-5.0]  # the bracket's first high point, and nothing above
    assert max(_codes(rows, None)) == -5.0
    assert ladder._centre(rows) < -5.0


def test_noise_widens_the_interval_and_the_ladder_widens_the_bowl():
    quiet, noisy = (Ladder(_config(), 32, prior=None, max_trials=24) for _ in range(2))
    quiet_rows = _run(quiet, _bowl(noise=0.0))
    noisy_rows = _run(noisy, _bowl(noise=0.1))
    assert seed_noise(noisy_rows, noisy.config).shape > seed_noise(quiet_rows,
                                                                    quiet.config).shape
    assert {r.ladder for r in noisy_rows} >= {"widen"}
    low, high = noisy.interval(noisy_rows)
    assert high - low > noisy.precision  # it widened to ±2 octaves, and the noise is real
    done = noisy.plan(noisy_rows).done  # and it says the precision was not bought
    assert "wider than the 0.75 asked" in done and "pinned" not in done


def test_flat_hparams_after_the_lr_then_a_recheck_at_the_choice():
    config = _config(weight_decay=(1e-5, 1e-1), batch_sizes=(4, 8, 16))
    ladder = Ladder(config, 32, prior=None, max_trials=30)
    rows = _run(ladder, _bowl(optimum=-7.0, best_decay=1e-3, best_batch=16))
    flat = [r for r in rows if r.ladder == Step.FLAT.value]
    # λ = 0 (the base) at the LR optimum is a bowl trial already: the decades join it
    assert {r.hparams.weight_decay for r in flat} >= {1e-4, 1e-3, 1e-2}
    batches = {r.hparams.batch_size: math.log2(r.hparams.lr) for r in flat
               if r.hparams.weight_decay == 1e-3}
    centre = batches[8]
    assert batches[16] == pytest.approx(centre + 0.5) and batches[4] == pytest.approx(
        centre - 0.5)  # the √k rule moved each batch's LR
    recheck = [r for r in rows if r.ladder == Step.RECHECK.value]
    assert recheck and {(r.hparams.weight_decay, r.hparams.batch_size) for r in recheck} == {
        (1e-3, 16)}
    assert ladder.flat_for_next(rows) == (1e-3, 16)
    prior = prior_from(config, 64, [(32, ladder, rows)])
    assert (prior.weight_decay, prior.batch_size) == (1e-3, 16)


def test_the_multipliers_step_moves_the_one_that_matters_and_holds_it():
    """A readout multiplier whose loss is best at 4 (2 octaves up), an embedding LR
    multiplier that changes nothing: step 7 tries each at 2^±2, then 2^±1 beside the
    readout's best; the readout moves to 4, the embedding stays at 1; the LR bowl is
    rechecked there, and the next width holds the choice."""
    config = _config(weight_decay=(1e-5, 1e-1), multipliers=(2.0**-4, 2.0**4))
    ladder = Ladder(config, 32, prior=None, max_trials=40)

    def readout(values):  # relative loss: 3% per octave from 4
        return 2.5 * 0.03 * abs(math.log2(values[1]) - 2.0)

    rows = _run(ladder, _bowl(optimum=-7.0, best_decay=1e-3), multipliers=readout)
    step = [r for r in rows if r.ladder == Step.MULTIPLIERS.value]
    tried = {(r.hparams.embedding_lr_mult, r.hparams.readout_mult) for r in step}
    assert {(0.25, 1.0), (4.0, 1.0), (1.0, 0.25), (1.0, 4.0)} <= tried
    assert {(1.0, 2.0), (1.0, 8.0)} <= tried  # one octave beside the moved best
    assert all(r.hparams.weight_decay == 1e-3 for r in step)  # at the chosen λ
    assert ladder.multipliers_for_next(rows) == (1.0, 4.0)
    at_choice = [r for r in rows if r.hparams.readout_mult == 4.0
                 and r.hparams.embedding_lr_mult == 1.0 and r.hparams.weight_decay == 1e-3]
    assert {r.ladder for r in at_choice} == {"multipliers", "recheck"}
    assert len({r.hparams.lr for r in at_choice}) >= 3  # the bowl, rechecked at the choice
    prior = prior_from(config, 64, [(32, ladder, rows)])
    assert prior.multipliers == (1.0, 4.0)
    # a choice whose bowl was never rechecked is not carried (the predictor could not
    # read the width's LR optimum there)
    unchecked = [r for r in rows if r.ladder != Step.RECHECK.value]
    assert ladder.multipliers_for_next(unchecked) == (1.0, 1.0)
    later = Ladder(config, 64, prior=prior, max_trials=20)
    first = later.plan([]).points
    assert {p.multipliers for p in first} == {(1.0, 4.0)}
    assert not any(p.step is Step.MULTIPLIERS for p in first)


def test_a_multiplier_stays_at_its_base_unless_it_beats_the_seed_noise():
    """A gain of 0.1% (under twice the seed noise the bowl's replicates measure, and under
    the 0.5% floor) is noise: nothing moves, and no recheck is spent."""
    config = _config(multipliers=(2.0**-4, 2.0**4))
    ladder = Ladder(config, 32, prior=None, max_trials=40)

    def tiny_gain(values):
        return -0.001 * 2.5 if values == (1.0, 4.0) else 0.0

    rows = _run(ladder, _bowl(optimum=-7.0, noise=0.01), multipliers=tiny_gain)
    assert 2 * ladder.noise(rows) > 0.001
    assert ladder.multipliers_for_next(rows) == (1.0, 1.0)
    assert not [r for r in rows if r.ladder == Step.RECHECK.value]
    assert len([r for r in rows if r.ladder == Step.MULTIPLIERS.value]) == 4


# λ's loss on the built-in proxies (width 32, independent λ, 300 steps, LR 2^-5.3, mean of
# seeds 0 and 1; studies/results/weight_decay_widths.json): its optimum lies between two
# decades, and above it the loss climbs steeply
MEASURED_DECAY = {0.0: 2.0474, 1.25e-3: 2.0386, 2.5e-3: 2.0287, 5e-3: 2.0207, 1e-2: 2.0302,
                  2e-2: 2.1293}


def _measured_decay(decay: float) -> float:
    known = sorted((math.log10(d), v) for d, v in MEASURED_DECAY.items() if d > 0)
    code = math.log10(decay) if decay > 0 else -math.inf
    if code <= known[0][0]:  # below the smallest measured λ: towards λ = 0's loss
        return MEASURED_DECAY[0.0] if decay < 1e-4 else known[0][1] + (
            MEASURED_DECAY[0.0] - known[0][1]) * (known[0][0] - code) / (known[0][0] + 4)
    if code >= known[-1][0]:  # above: the cliff goes on
        return known[-1][1] + 0.3 * (code - known[-1][0])
    return float(np.interp(code, *zip(*known, strict=True)))


def test_weight_decay_is_read_between_the_decades():
    """On the measured λ curve the decades alone offer 1e-3 and 1e-2, one on each side of
    the optimum (2.5e-3 … 5e-3); the half decades beside the best find it."""
    config = _config(weight_decay=(1e-5, 1e-1))
    ladder = Ladder(config, 32, prior=None, max_trials=30)

    def loss(code, seed, decay, batch):
        return _bowl(optimum=-5.3)(code, seed, 0.0, batch) - 2.5 + _measured_decay(decay)

    rows = _run(ladder, loss)
    decays = {r.hparams.weight_decay for r in rows if r.ladder == Step.FLAT.value}
    assert {1e-4, 1e-3, 1e-2} <= decays and any(2e-3 < d < 5e-3 for d in decays)
    chosen, _ = ladder.flat_for_next(rows)
    assert 2.5e-3 <= chosen <= 5e-3


def test_the_recheck_brackets_the_lr_where_the_sqrt_rule_guessed_wrong():
    """On a corpus where the LR optimum does not move with batch, the √k guess puts the
    chosen batch's points below the optimum: the recheck walks up until the best of them
    has a worse LR on each side, so the width's optimum is never read off an edge."""
    config = _config(batch_sizes=(4, 8, 16))
    ladder = Ladder(config, 32, prior=None, max_trials=30)
    rows = _run(ladder, _bowl(optimum=-7.0, best_batch=4, batch_exponent=0.0,
                                batch_penalty=0.2))
    recheck = [r for r in rows if r.ladder == Step.RECHECK.value]
    assert {r.hparams.batch_size for r in recheck} == {4}
    at_choice = {round(math.log2(r.hparams.lr), 2): r.final_val_loss for r in rows
                 if r.hparams.batch_size == 4}
    best = min(at_choice, key=at_choice.get)
    assert best == -7.0 and min(at_choice) < best < max(at_choice)
    assert max(at_choice) > -7.0  # it went above the √k guess (-7.5) to find the bowl


def test_coupled_weight_decay_is_moved_to_the_next_width():
    config = _config(weight_decay=(1e-5, 1e-1), rule=WeightDecay.COUPLED)
    ladder = Ladder(config, 32, prior=None, max_trials=30)
    rows = _run(ladder, _bowl(best_decay=1e-3))
    decay, _ = ladder.flat_for_next(rows)
    # coupled λ under µP decays hidden matrices by α·λ/m: the same decay at 4× the width
    # takes 4× the λ (mup.rules.coupled_decay_scale)
    assert prior_from(config, 128, [(32, ladder, rows)]).weight_decay == pytest.approx(
        4 * decay)


def test_a_round_waits_for_the_trials_in_flight():
    ladder = Ladder(_config(), 32, prior=None, max_trials=24)
    running = TrialRecord(study="s", number=0, width=32, status=TrialStatus.RUNNING)
    plan = ladder.plan([running])
    assert not plan.points and plan.done is None


def test_auto_placement():
    assert auto_placement(64, 2).model_dump() == {"workers": 2, "threads": 1, "auto": True}
    assert auto_placement(64, 16).workers == 4 and auto_placement(64, 16).threads == 1
    assert auto_placement(64, 16, threads=4).workers == 4
    assert auto_placement(1024, 2).model_dump() == {"workers": 1, "threads": 2, "auto": True}
    assert auto_placement(64, 1).workers == 1


# ---- the real thing ---------------------------------------------------------------------------


@pytest.fixture
def lr_config(tiny_study_config):
    """The tiny study with the LR only, on a range the ladder can walk."""
    space = SearchSpace(lr=(2.0**-10, 2.0**-2), base=HParams(batch_size=4))
    return tiny_study_config.model_copy(update={"space": space})


def _trials(name: str, url: str) -> list[tuple]:
    # a trial killed between being claimed and writing its inputs is lost with no hparams
    return sorted((r.width, r.number, r.hparams.lr if r.hparams else None, r.seed, r.ladder,
                   r.status.value, r.final_val_loss) for r in load_trials(name, url))


def test_one_process_or_two_hold_the_same_trials(lr_config, tiny_corpus, tmp_path):
    """A round depends on finished trials only, and each trial's threads are fixed: two
    workers side by side record exactly the trials and losses of one process."""
    one, two = f"sqlite:///{tmp_path / 'one.db'}", f"sqlite:///{tmp_path / 'two.db'}"
    run = dict(study="l", widths=(32, 64), trials=10, corpus=tiny_corpus)
    first = tune(lr_config, storage=one, runner=LocalRunner(workers=1, threads=1), **run)
    tune(lr_config, storage=two, runner=LocalRunner(workers=2, threads=1), **run)
    assert _trials("l", one) == _trials("l", two)
    assert [s.width for s in first.search] == [32, 64]
    assert all(s.trials <= 10 and s.flops > 0 for s in first.search)
    seeds = {r.seed for r in load_trials("l", one) if r.width == 32}
    assert seeds == {0, 1}
    # running it again plans nothing new
    again = tune(lr_config, storage=one, runner=LocalRunner(workers=1, threads=1), **run)
    assert _trials("l", one) == _trials("l", two)
    assert [s.trials for s in again.search] == [s.trials for s in first.search]


def test_a_killed_ladder_resumes_to_the_same_trials(text_file, tmp_path):
    """SIGKILL mid-width, run again: the lost trial is retried and the width ends with the
    very trials (points, seeds, losses) of a run that was never interrupted."""
    config_file = lr_only_toml(tmp_path / "k.toml", steps=24, eval_every=12)

    def command(db):
        return [sys.executable, "-m", "hptransfer.cli", "tune", "--config", str(config_file),
                "--data", text_file, "--widths", "32", "--trials", "8", "--study", "k",
                "--storage", str(db), "--workers", "1", "--threads", "1", "--json"]

    # the default lease timing: a killed process's trial is retried at once, with no grace
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPTRANSFER_GRACE")}
    reference, db = tmp_path / "ref.db", tmp_path / "k.db"
    subprocess.run(command(reference), env=env, check=True, stdout=subprocess.DEVNULL,
                   timeout=300)
    log = tmp_path / "killed.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command(db), env=env, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
    deadline, done = time.time() + 120, []
    while time.time() < deadline and len(done) < 3 and process.poll() is None:
        time.sleep(0.05)
        try:
            done = [r for r in load_trials("k", str(db)) if r.finished]
        except Exception:  # not created yet
            continue
    assert process.poll() is None, f"the tune ended before it was killed:\n{log.read_text()}"
    while not freeze_outside_a_transaction(process, db):  # what it finished is final
        time.sleep(0.01)
    done = [r for r in load_trials("k", str(db)) if r.finished]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 3 <= len(done) < len(load_trials("k", str(reference)))  # killed mid-width
    subprocess.run(command(db), env=env, check=True, stdout=subprocess.DEVNULL, timeout=300)

    def points(path):
        return sorted(t[2:] for t in _trials("k", str(path)) if t[5] != "lost")

    assert points(db) == points(reference)


def test_a_follower_without_a_planner_says_what_to_run(lr_config, tiny_corpus, tmp_path,
                                                       monkeypatch):
    from hptransfer.study import worker

    monkeypatch.setenv("HPTRANSFER_GRACE_S", "1")
    monkeypatch.setenv("HPTRANSFER_HEARTBEAT_S", "0.2")
    url = f"sqlite:///{tmp_path / 's.db'}"
    tune(lr_config, study="f", widths=(32,), trials=3, storage=url, corpus=tiny_corpus,
         runner=LocalRunner(workers=1, threads=1))
    with pytest.raises(StudyError, match="no tune has planned it in 1 s"):
        # the width is done; a fresh follower on a new width with no planner waits, then says
        worker.run_worker("f", 64, lr_config, url, tiny_corpus, trials=3,
                          sampler=SamplerKind.LADDER, threads=1)


@pytest.mark.parametrize("flags, message", [
    (dict(pruning=Pruning.MEDIAN), "--pruner"),
    (dict(warm_start=WarmStart.OCTAVES), "--warm-start"),
    (dict(lr_precision=0.0), "lr-precision"),
])
def test_the_ladder_refuses_options_it_cannot_honour(flags, message, lr_config, tiny_corpus,
                                                     tmp_path):
    url = tmp_path / "s.db"
    with pytest.raises(StudyError, match=message):
        tune(lr_config, study="r", widths=(32,), storage=str(url), corpus=tiny_corpus,
             **flags)
    assert not url.exists()


def test_the_prediction_uses_the_measured_seed_noise(lr_config, tiny_corpus, tmp_path):
    from hptransfer.transfer import predict_from_trials

    url = f"sqlite:///{tmp_path / 's.db'}"
    tune(lr_config, study="n", widths=(32, 64), trials=12, storage=url, corpus=tiny_corpus,
         runner=LocalRunner(workers=1, threads=1))
    records = load_trials("n", url)
    noisy = predict_from_trials(records, lr_config, 256, study="n")
    assert noisy.evidence.seed_noise is not None and noisy.evidence.seed_noise.widths == (32,)
    quiet = predict_from_trials([r for r in records if r.seed == 0], lr_config, 256,
                                study="n")
    assert quiet.evidence.seed_noise is None

    def span(p):
        low, high = p.evidence.widths[0].optima["lr"].interval
        return math.log2(high / low)

    assert span(noisy) >= span(quiet)
    assert noisy.regret is not None and noisy.regret.expected >= 0
    assert noisy.regret.at_low >= 0 and noisy.regret.at_high >= 0


def test_tune_searches_the_multipliers_on_the_narrowest_width_and_predict_carries_them(
        text_file, tmp_path):
    """The command line end to end: --multiplier-range turns step 7 on; its trials are on
    the narrowest width only, each recorded with its multipliers; the wider width holds
    the choice, and predict, its JSON and its snippet carry it to the target."""
    import json

    from hptransfer.study.attributes import load_config
    from hptransfer.transfer.predictor import predict_hparams

    config_file = lr_only_toml(tmp_path / "m.toml", steps=16, eval_every=8)
    db = str(tmp_path / "m.db")
    common = ["--config", str(config_file), "--data", text_file, "--study", "m",
              "--storage", db, "--workers", "1", "--threads", "1"]
    run_cli(["tune", *common, "--sampler", "tpe", "--widths", "32",
             "--multiplier-range", "2^-2,2^2"])  # an Optuna sampler does not run step 7
    run_cli(["tune", *common, "--widths", "32,64", "--trials", "20",
             "--multiplier-range", "2^-2,2^2", "--json"], code=0)
    assert load_config("m", db).space.multipliers == (0.25, 4.0)
    rows = load_trials("m", db)
    step = [r for r in rows if r.ladder == Step.MULTIPLIERS.value]
    assert {r.width for r in step} == {32}
    assert {(r.hparams.embedding_lr_mult, r.hparams.readout_mult) for r in step} >= {
        (0.25, 1.0), (4.0, 1.0), (1.0, 0.25), (1.0, 4.0)}
    chosen = {(r.hparams.embedding_lr_mult, r.hparams.readout_mult)
              for r in rows if r.width == 64}
    assert len(chosen) == 1  # the wider width holds one choice
    prediction = predict_hparams(512, study="m", storage=db)
    assert (prediction.hparams.embedding_lr_mult, prediction.hparams.readout_mult) in chosen
    assert any(rule.name == "multipliers" for rule in prediction.rules)
    shown = run_cli(["predict", "--target-width", "512", "--study", "m", "--storage", db],
                    code=0).output
    assert "multipliers" in shown and "tuned on the narrowest proxy" in shown
    as_json = json.loads(run_cli(["predict", "--target-width", "512", "--study", "m",
                                  "--storage", db, "--json"], code=0).output)
    assert as_json["hparams"]["readout_mult"] == prediction.hparams.readout_mult
    snippet = run_cli(["predict", "--target-width", "512", "--study", "m", "--storage", db,
                       "--snippet", "torch"], code=0).output
    assert "readout_mult" in snippet and "hparams=hparams" in snippet
