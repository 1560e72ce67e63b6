"""The transfer predictor: :func:`hptransfer.transfer.predict_hparams` and ``hptransfer predict``.

Most tests build trial records from known loss bowls, loss = a(width) + c·(log2 lr − opt)²
+ noise (seeded), so the truth is known and nothing trains. One module-scoped fixture tunes
a tiny real study (widths 32 and 64, one block, 4 steps) for the end-to-end and CLI tests;
another writes a 30-trial synthetic study into SQLite and predicts from it.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import optuna
import pytest
from click.testing import CliRunner

from hptransfer.budget import Budget
from hptransfer.cli import main
from hptransfer.hparams import HParams, WeightDecay
from hptransfer.space import SearchSpace
from hptransfer.spec import ModelSpec
from hptransfer.study.attributes import CONFIG_ATTR
from hptransfer.study.config import StudyConfig
from hptransfer.study.optimum import fit_window
from hptransfer.study.schema import TrialRecord, TrialStatus
from hptransfer.study.search import SamplerKind
from hptransfer.transfer import (
    HORIZON_EXPONENT,
    Prediction,
    PredictionError,
    TransferModel,
    predict_from_trials,
    predict_hparams,
)

TRUE_OPT = -6.3  # log2 of the optimum base LR in the synthetic bowls
GRID = list(range(-12, -1, 2))  # the warm-start grid, 2 octaves apart


def make_config(*, wd: tuple[float, float] | None = None, batches: tuple[int, ...] | None = None,
                param: str = "mup", rule: WeightDecay = WeightDecay.INDEPENDENT,
                lr: tuple[float, float] | None = (2.0**-12, 2.0**-2)) -> StudyConfig:
    return StudyConfig(
        spec=ModelSpec(width=32, depth=4, head_dim=16, seq_len=128, base_width=128, param=param),
        budget=Budget(tokens=150 * 16 * 128),
        space=SearchSpace(lr=lr, weight_decay=wd, batch_sizes=batches,
                          base=HParams(batch_size=16, weight_decay_rule=rule)),
        corpus_hash="synthetic")


def record(width: int, number: int, loss: float | None, *, lr: float, batch: int = 16,
           wd: float = 0.0, status: TrialStatus = TrialStatus.COMPLETE) -> TrialRecord:
    return TrialRecord(study=f"s.w{width}", number=number, width=width, status=status,
                       hparams=HParams(lr=lr, batch_size=batch, weight_decay=wd),
                       final_val_loss=loss)


def bowl(widths, opt=lambda w: TRUE_OPT, *, seed=0, noise=0.003, curvature=0.03, extra=6,
         diverge_above: float | None = None) -> list[TrialRecord]:
    """The warm-start grid plus ``extra`` points within 1.5 octaves of the optimum."""
    rng = np.random.default_rng(seed)
    records = []
    for width in widths:
        centre = opt(width)
        xs = GRID + list(centre + rng.uniform(-1.5, 1.5, extra))
        for number, x in enumerate(xs):
            loss = (3.0 - 0.1 * math.log2(width / 32) + curvature * (x - centre) ** 2
                    + noise * rng.standard_normal())
            if diverge_above is not None and x > diverge_above:
                records.append(record(width, number, None, lr=2.0**x,
                                      status=TrialStatus.DIVERGED))
            else:
                records.append(record(width, number, loss, lr=2.0**x))
    return records


def octaves(value: float) -> float:
    return math.log2(value)


# ---- recovering known optima ----------------------------------------------------------------


def test_constant_optimum_is_recovered_within_its_intervals():
    prediction = predict_from_trials(bowl([32, 64, 128]), make_config(), 4096)
    for width in prediction.evidence.widths:
        lr = width.optima["lr"]
        assert lr.method == "quadratic"
        assert octaves(lr.interval[0]) <= TRUE_OPT <= octaves(lr.interval[1])
        assert abs(octaves(lr.value) - TRUE_OPT) < 0.25
        assert width.loss_at_optimum == pytest.approx(3.0 - 0.1 * math.log2(width.width / 32),
                                                      abs=0.01)
    low, high = prediction.intervals["lr"]
    assert octaves(low) <= TRUE_OPT <= octaves(high)
    assert abs(octaves(prediction.hparams.lr) - TRUE_OPT) < 0.25
    fit = prediction.evidence.fits["lr"]
    assert fit.model is TransferModel.CONSTANT
    assert fit.slope_interval[0] <= 0 <= fit.slope_interval[1]
    assert all(abs(err) < 0.25 for err in fit.leave_one_out.values())
    assert [r.name for r in prediction.rules] == ["width-constant:lr"]
    assert not any("not holding" in w for w in prediction.warnings)


def test_a_mup_finite_width_correction_converges_instead_of_drifting_forever():
    """Under µP the optimum has an infinite-width limit: a modest drift between two proxies
    is extrapolated as a 1/width correction (towards the limit), not log-linearly."""
    limit, c = -6.0, -40.0  # log2 opt = limit + c / width: -7.25 at 32, -6.63 at 64
    converging = lambda w: limit + c / w  # noqa: E731
    prediction = predict_from_trials(bowl([32, 64], converging, noise=0.001), make_config(),
                                     1024)
    fit = prediction.evidence.fits["lr"]
    assert fit.model is TransferModel.CONVERGING and fit.slope > 0.25
    assert fit.limit == pytest.approx(limit, abs=0.25)
    assert abs(octaves(prediction.hparams.lr) - converging(1024)) < 0.3
    low, high = prediction.intervals["lr"]
    assert octaves(low) <= converging(1024) <= octaves(high)
    assert [r.name for r in prediction.rules][0] == "width-converging:lr"
    assert not any("not holding" in w or "not established" in w for w in prediction.warnings)
    # the same drift under SP is no finite-width correction: log-linear, and the alarm
    sp = predict_from_trials(bowl([32, 64], converging, noise=0.001), make_config(param="sp"),
                             1024)
    assert sp.evidence.fits["lr"].model is TransferModel.LOG_LINEAR
    assert any("not holding" in w for w in sp.warnings)


def test_a_steep_mup_drift_is_no_finite_width_correction():
    steep = lambda w: TRUE_OPT - 1.0 * math.log2(w / 32)  # noqa: E731  (SP-like)
    prediction = predict_from_trials(bowl([32, 64], steep, noise=0.001), make_config(), 1024)
    assert prediction.evidence.fits["lr"].model is TransferModel.LOG_LINEAR
    assert any("not holding" in w for w in prediction.warnings)


def test_known_drift_is_detected_and_extrapolated():
    drift = lambda w: TRUE_OPT + 0.5 * math.log2(w / 32)  # noqa: E731
    prediction = predict_from_trials(bowl([32, 64, 128], drift, seed=1), make_config(), 1024)
    fit = prediction.evidence.fits["lr"]
    assert fit.model is TransferModel.LOG_LINEAR
    assert fit.slope_interval[0] <= 0.5 <= fit.slope_interval[1]
    assert abs(fit.slope - 0.5) < 0.1
    alarm = [w for w in prediction.warnings if "transfer is not holding" in w]
    assert alarm and "the optimum LR moves +0.5" in alarm[0]
    assert abs(octaves(prediction.hparams.lr) - drift(1024)) < 0.5  # extrapolated, not copied
    assert any(r.name == "width-log-linear:lr" for r in prediction.rules)


def test_drift_alarm_names_sp_as_a_suspect():
    drift = lambda w: TRUE_OPT - 0.7 * math.log2(w / 32)  # noqa: E731
    prediction = predict_from_trials(bowl([32, 64, 128], drift, seed=2),
                                     make_config(param="sp"), 1024)
    alarm = [w for w in prediction.warnings if "transfer is not holding" in w]
    assert alarm and "-0.7" in alarm[0] and "standard parametrization" in alarm[0]


def test_a_large_slope_that_is_not_yet_significant_is_announced_as_loudly():
    """Two noisy widths with a real drift of −1 octave per doubling: the slope's interval
    still reaches 0, so the model stays constant, but "no drift established" must not read
    as "transfer holds" (the SP benchmark at widths 32 and 64 is this case)."""
    drift = lambda w: TRUE_OPT - 1.0 * math.log2(w / 32)  # noqa: E731
    prediction = predict_from_trials(bowl([32, 64], drift, seed=0, noise=0.02,
                                          curvature=0.01, extra=3),
                                     make_config(param="sp"), 1024)
    fit = prediction.evidence.fits["lr"]
    assert fit.model is TransferModel.CONSTANT and fit.slope < -0.25
    assert fit.slope_interval[0] < 0 < fit.slope_interval[1]
    warning = [w for w in prediction.warnings if "transfer is not established" in w]
    assert warning and f"{fit.slope:+.2f} octaves per doubling" in warning[0]
    assert "standard parametrization" in warning[0]
    assert not any("transfer holds" in r.detail for r in prediction.rules)


def test_diverged_trials_bound_the_optimum():
    # the bowl's own minimum (2^-4.5) lies beyond the stability edge at 2^-5
    records = bowl([32, 64], lambda w: -4.5, diverge_above=-5.0, extra=8)
    prediction = predict_from_trials(records, make_config(), 512)
    for width in prediction.evidence.widths:
        assert width.diverged > 0
        assert width.diverged_lr is not None and octaves(width.diverged_lr) > -5.0
        assert width.optima["lr"].value < width.diverged_lr
        assert width.optima["lr"].interval[1] <= width.diverged_lr
    assert prediction.hparams.lr < min(w.diverged_lr for w in prediction.evidence.widths)


def test_unbracketed_optimum_falls_back_to_the_best_point_and_warns():
    records = bowl([32, 64], lambda w: -1.0, extra=0)  # the bowl's bottom above the grid
    prediction = predict_from_trials(records, make_config(), 256)
    for width in prediction.evidence.widths:
        assert width.optima["lr"].method == "best-point"
        assert octaves(width.optima["lr"].value) == -2
    assert any("not bracketed above" in w for w in prediction.warnings)


def test_pruned_lost_and_error_trials_are_ignored():
    records = bowl([32, 64])
    noise = [record(32, 100 + i, 0.1, lr=2.0**-2, status=status) for i, status in
             enumerate((TrialStatus.PRUNED, TrialStatus.LOST, TrialStatus.ERROR))]
    clean = predict_from_trials(records, make_config(), 512)
    noisy = predict_from_trials(records + noise, make_config(), 512)
    assert noisy.hparams.lr == clean.hparams.lr
    assert noisy.evidence.widths[0].ignored == 3


# ---- weight decay and batch size ------------------------------------------------------------


def multi_hparam_study(widths, *, seed=0, wd_opt=-10.0, wd_shift=lambda w: 0.0, n=24):
    """Grid at the base point (batch 16, λ = 0), then sampler-like points near the optimum;
    the LR optimum moves √k with batch, λ = 0 costs 0.01, batch 16 is best."""
    rng = np.random.default_rng(seed)
    records = []
    for width in widths:
        best_wd = wd_opt + wd_shift(width)
        points = [(float(x), 16, 0.0) for x in GRID]
        for _ in range(n):
            batch = int(rng.choice([8, 16, 32]))
            wd = 0.0 if rng.random() < 0.3 else 2.0 ** (best_wd + rng.normal(0, 2))
            points.append((TRUE_OPT + 0.5 * math.log2(batch / 16) + rng.normal(0, 1), batch, wd))
        for number, (x, batch, wd) in enumerate(points):
            wd_loss = 0.002 * (math.log2(wd) - best_wd) ** 2 if wd else 0.01
            loss = (3.0 + 0.03 * (x - TRUE_OPT - 0.5 * math.log2(batch / 16)) ** 2 + wd_loss
                    + 0.01 * abs(math.log2(batch / 16)) + 0.002 * rng.standard_normal())
            records.append(record(width, number, loss, lr=2.0**x, batch=batch, wd=wd))
    return records


def test_weight_decay_and_batch_are_estimated_when_searched():
    config = make_config(wd=(1e-5, 0.1), batches=(8, 16, 32))
    prediction = predict_from_trials(multi_hparam_study([32, 64, 128]), config, 1024)
    assert set(prediction.intervals) == {"lr", "weight_decay", "batch_size"}
    assert prediction.hparams.batch_size == 16
    low, high = prediction.intervals["batch_size"]
    assert low <= 16 <= high
    wd = prediction.hparams.weight_decay
    assert wd > 0 and abs(math.log2(wd) + 10.0) < 2.0  # a rough optimum: flat surface
    assert prediction.intervals["weight_decay"][0] <= wd <= prediction.intervals["weight_decay"][1]
    assert abs(octaves(prediction.hparams.lr) - TRUE_OPT) < 0.25
    for width in prediction.evidence.widths:
        assert set(width.optima) == {"lr", "batch_size", "weight_decay"}
    assert any(r.name == "weight-decay-independent" for r in prediction.rules)


def test_zero_weight_decay_is_a_valid_optimum():
    config = make_config(wd=(1e-5, 0.1))
    records = []
    for width in (32, 64):
        for number, x in enumerate(GRID + [-7.0, -6.5, -5.5]):
            for k, wd in enumerate((0.0, 1e-3, 1e-2)):
                loss = 3.0 + 0.03 * (x - TRUE_OPT) ** 2 + 0.02 * (wd > 0) + 2 * wd
                records.append(record(width, 10 * number + k, loss, lr=2.0**x, wd=wd))
    prediction = predict_from_trials(records, config, 512)
    assert prediction.hparams.weight_decay == 0.0
    assert prediction.intervals["weight_decay"][0] == 0.0


def test_coupled_weight_decay_gets_the_m_correction():
    # under coupled λ the per-step decay is s·(α/m)·λ, so the optimum λ grows like m
    config = make_config(wd=(1e-5, 0.1), rule=WeightDecay.COUPLED)
    records = multi_hparam_study([32, 64, 128], wd_shift=lambda w: math.log2(w / 128), seed=3)
    prediction = predict_from_trials(records, config, 1024)
    assert any(r.name == "weight-decay-coupled-xm" for r in prediction.rules)
    assert any("convention is coupled" in w for w in prediction.warnings)
    truth = -10.0 + math.log2(1024 / 128)
    assert abs(math.log2(prediction.hparams.weight_decay) - truth) < 2.0


# ---- beyond width: batch, horizon, depth ----------------------------------------------------


def test_batch_horizon_and_depth_rules_are_named_and_applied():
    config = make_config()
    records = bowl([32, 64])
    plain = predict_from_trials(records, config, 1024)
    tokens = 150 * 16 * 128
    moved = predict_from_trials(records, config, 1024, target_batch=64,
                                target_tokens=8 * tokens, target_depth=12)
    names = [r.name for r in moved.rules]
    assert "batch-sqrt" in names and "horizon-power-law" in names
    factor = math.sqrt(64 / 16) * 8.0**-HORIZON_EXPONENT
    assert moved.hparams.lr == pytest.approx(plain.hparams.lr * factor)
    assert moved.intervals["lr"][0] == pytest.approx(plain.intervals["lr"][0] * factor)
    assert moved.hparams.batch_size == 64 and moved.target_tokens == 8 * tokens
    assert moved.target_depth == 12 and moved.spec.depth == 12
    assert any("depth transfer is not supported" in w for w in moved.warnings)
    assert not any("depth" in w for w in plain.warnings)
    same = predict_from_trials(records, config, 1024, target_batch=16, target_tokens=tokens)
    assert same.hparams.lr == plain.hparams.lr
    assert not {"batch-sqrt", "horizon-power-law"} & {r.name for r in same.rules}


def test_a_measured_horizon_exponent_replaces_the_default():
    config, records = make_config(), bowl([32, 64])
    tokens = 150 * 16 * 128
    default = predict_from_trials(records, config, 1024, target_tokens=8 * tokens)
    measured = predict_from_trials(records, config, 1024, target_tokens=8 * tokens,
                                   horizon_exponent=0.5)
    # 3 doublings of tokens at β = 0.5 instead of 0.3: 0.6 octave lower
    assert math.log2(default.hparams.lr / measured.hparams.lr) == pytest.approx(0.6)
    rule = next(r.detail for r in measured.rules if r.name == "horizon-power-law")
    assert "β = 0.5 is given" in rule
    assert "literature default" in next(r.detail for r in default.rules
                                        if r.name == "horizon-power-law")
    with pytest.raises(PredictionError, match=r"horizon_exponent=-0.3 is outside \[0, 1\]"):
        predict_from_trials(records, config, 1024, target_tokens=8 * tokens,
                            horizon_exponent=-0.3)


def test_transfer_figure_draws_a_curve_only_when_lr_alone_varies():
    from hptransfer.report.plots import transfer_figure

    lr_only = bowl([32, 64])
    mixed = [r.model_copy(update={"hparams": r.hparams.model_copy(
        update={"weight_decay": 1e-4 * (r.number % 2)})}) for r in lr_only]
    for records, style in ((lr_only, "-"), (mixed, "None")):
        curves = [line for line in transfer_figure("s", records).axes[0].get_lines()
                  if line.get_label().startswith("width")]
        assert [c.get_linestyle() for c in curves] == [style, style]


def test_baselines_are_reported_with_their_caveat():
    prediction = predict_from_trials(bowl([32, 64]), make_config(), 4096, target_tokens=10**9)
    baselines = prediction.baselines
    assert set(baselines) == {"zero-shot", "step-law", "deepseek"}
    best = min((r for r in bowl([32, 64]) if r.width == 64), key=lambda r: r.final_val_loss)
    assert baselines["zero-shot"].lr == best.hparams.lr
    n = prediction.spec.parameter_count()
    assert baselines["step-law"].lr == pytest.approx(1.79 * n**-0.713 * 1e9**0.307)
    assert baselines["step-law"].batch_tokens == pytest.approx(0.58 * 1e9**0.571)
    compute = prediction.spec.flops_per_token() * 1e9
    assert baselines["deepseek"].lr == pytest.approx(0.3118 * compute**-0.125)
    assert "SP fit" in baselines["deepseek"].note and "not directly comparable" in (
        baselines["step-law"].note)


# ---- refusals -------------------------------------------------------------------------------


def test_refuses_one_width():
    with pytest.raises(PredictionError, match="at least two widths"):
        predict_from_trials(bowl([64]), make_config(), 1024)


def test_refuses_a_width_without_completed_trials():
    dead = [record(128, i, None, lr=2.0**x, status=TrialStatus.DIVERGED)
            for i, x in enumerate(GRID)]
    with pytest.raises(PredictionError, match=r"no completed trials at width\(s\) \[128\]"):
        predict_from_trials(bowl([32, 64]) + dead, make_config(), 1024)


def test_refuses_a_study_without_an_lr_search():
    with pytest.raises(PredictionError, match="did not search the learning rate"):
        predict_from_trials(bowl([32, 64]), make_config(lr=None), 1024)


def test_refuses_a_target_the_spec_cannot_build():
    with pytest.raises(PredictionError, match="head_dim"):
        predict_from_trials(bowl([32, 64]), make_config(), 1000)


def test_refuses_a_missing_study_without_creating_a_storage(tmp_path):
    path = tmp_path / "nothing.db"
    with pytest.raises(PredictionError, match="no storage file"):
        predict_hparams(1024, study="proxy", storage=str(path))
    assert not path.exists()


# ---- the record and its exports -------------------------------------------------------------


def test_json_has_the_required_keys():
    config = make_config(wd=(1e-5, 0.1), batches=(8, 16, 32))
    prediction = predict_from_trials(multi_hparam_study([32, 64]), config, 4096)
    data = json.loads(prediction.model_dump_json())
    assert data["target_width"] == 4096
    assert {"lr", "weight_decay", "batch_size"} <= set(data["hparams"])
    assert all(len(v) == 2 and v[0] <= v[1] for v in data["intervals"].values())
    assert set(data["intervals"]) == {"lr", "weight_decay", "batch_size"}
    assert isinstance(data["warnings"], list) and isinstance(data["rules"], list)
    assert {"widths", "fits"} <= set(data["evidence"])
    assert {"slope", "slope_interval", "leave_one_out"} <= set(data["evidence"]["fits"]["lr"])
    assert Prediction.model_validate_json(prediction.model_dump_json()) == prediction


def test_snippets_build_the_target_with_its_mup_optimizer():
    """The torch snippet runs: it builds the study's family at the target width with the
    µP init and an optimizer whose groups carry the table's LRs (hidden α/m, embedding α)."""
    prediction = predict_from_trials(bowl([32, 64]), make_config(), 256)
    code = prediction.torch_snippet()
    assert "optimizer_for(model, spec, hparams)" in code and '"width":256' in code
    scope: dict = {}
    exec(compile(code, "snippet", "exec"), scope)
    alpha, m = prediction.hparams.lr, 256 / 128
    groups = scope["optimizer"].param_groups
    peaks = sorted({group["initial_lr"] for group in groups})  # the schedule's peak per group
    assert peaks == pytest.approx(sorted({alpha / m, alpha}))
    assert tuple(scope["model"].readout.weight.shape) == (256, 256)
    assert max(group["lr"] for group in groups) < max(peaks)  # warmup starts below the peak


def test_hf_snippet_is_for_hf_models():
    config = make_config()
    llama = config.model_copy(update={"spec": config.spec.model_copy(
        update={"model": "hf-llama"})})
    prediction = predict_from_trials(bowl([32, 64]), llama, 256)
    code = prediction.hf_snippet()
    compile(code, "snippet", "exec")
    assert "Trainer(model=model, args=args, optimizers=optimizers" in code
    assert "ONE global" not in code  # the µP groups go in the Trainer's optimizer


# ---- a real study: end to end, the CLI, and a stored study --------------------------------


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, tiny_corpus, tiny_study_config):
    """Widths 32 and 64, one block, 4 steps: the LR grid 2^-8, 2^-6, 2^-4 (3 trials each)."""
    from hptransfer.study.tune import tune
    from hptransfer.study.worker import LocalRunner

    folder = tmp_path_factory.mktemp("predict")
    url = f"sqlite:///{folder / 'studies.db'}"
    config = tiny_study_config
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPTRANSFER_HOME", str(folder / "home"))
        tune(config, study="tiny", widths=(32, 64), trials=3, storage=url, corpus=tiny_corpus,
             runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
    return url


def test_end_to_end_on_a_tuned_study(tiny_study):
    prediction = predict_hparams(256, study="tiny", storage=tiny_study)
    assert [w.width for w in prediction.evidence.widths] == [32, 64]
    assert 2.0**-10 <= prediction.hparams.lr <= 2.0**-2
    low, high = prediction.intervals["lr"]
    assert low <= prediction.hparams.lr <= high
    assert prediction.spec.width == 256 and prediction.hparams.batch_size == 4


@pytest.fixture
def runner(tmp_path, monkeypatch) -> CliRunner:
    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_cli_predict(runner, tiny_study, tmp_path):
    args = ["predict", "--target-width", "256", "--study", "tiny", "--storage", tiny_study]
    result = runner.invoke(main, [*args, "--baseline", "--target-batch", "16"])
    assert result.exit_code == 0, result.output
    assert "lr" in result.output and "rules applied:" in result.output
    assert "batch-sqrt" in result.output and "step-law" in result.output

    result = runner.invoke(main, [*args, "--json", "--out", "p.json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["target_width"] == 256 and "lr" in data["intervals"]
    assert json.loads((tmp_path / "p.json").read_text()) == data

    result = runner.invoke(main, [*args, "--snippet", "torch"])
    assert result.exit_code == 0, result.output
    compile(result.output, "snippet", "exec")
    result = runner.invoke(main, [*args, "--snippet", "hf"])  # the built-in model
    assert result.exit_code == 2 and "--snippet hf builds a Hugging Face" in result.output


@pytest.mark.parametrize("extra, message", [
    (["--target-width", "100"], "head_dim"),  # not a multiple of the head dim
    (["--target-width", "256", "--study", "nope"], "no study named 'nope'"),
    (["--target-width", "256", "--json", "--snippet", "hf"], "give one of them"),
    (["--target-width", "256", "--target-tokens", "0"], "positive whole number"),
    (["--target-width", "256", "--target-tokens", "1.5"], "positive whole number"),
    (["--target-width", "0"], "range"),
    (["--target-width", "256", "--target-tokens", "1e9", "--horizon-exponent", "3"],
     "is outside [0, 1]"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(runner, tiny_study, tmp_path, extra, message):
    args = ["predict", "--study", "tiny", "--storage", tiny_study, "--out", "p.json"]
    result = runner.invoke(main, [*args, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "p.json").exists()


def test_cli_missing_default_storage_writes_nothing(runner, tmp_path):
    result = runner.invoke(main, ["predict", "--target-width", "256"])
    assert result.exit_code == 2 and "no storage file" in result.output
    assert not (tmp_path / "home").exists()


def write_study(url: str, name: str, records: list[TrialRecord], config: StudyConfig) -> None:
    """Write records as ``hptransfer tune`` stores them (one Optuna study per width)."""
    from hptransfer.study.storage import open_storage

    storage = open_storage(url)
    for width in sorted({r.width for r in records}):
        study = optuna.create_study(study_name=f"{name}.w{width}", storage=storage)
        study.set_user_attr(CONFIG_ATTR, config.model_dump_json())
        for r in (r for r in records if r.width == width):
            attrs = {"status": r.status.value, "width": width,
                     "hparams": r.hparams.model_dump_json(), "final_val_loss": r.final_val_loss}
            state = (optuna.trial.TrialState.COMPLETE if r.status is TrialStatus.COMPLETE
                     else optuna.trial.TrialState.FAIL)
            study.add_trial(optuna.trial.create_trial(
                state=state, value=r.final_val_loss if r.final_val_loss is not None else None,
                user_attrs=attrs))


def write_synthetic_study(url: str, name: str = "stored"
                          ) -> tuple[list[TrialRecord], StudyConfig]:
    """A 30-trial study (widths 32, 64, 128, 10 trials each, LR, λ and batch searched) from
    known bowls, written into ``url``; benchmarks/predict_speed.py times its prediction."""
    config = make_config(wd=(1e-5, 0.1), batches=(8, 16, 32))
    records = multi_hparam_study([32, 64, 128], n=4)  # the 6-point grid + 4 per width
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's experimental-feature notices
        write_study(url, name, records, config)
    return records, config


def test_prediction_from_a_30_trial_sqlite_study(tmp_path):
    """A study stored as ``hptransfer tune`` stores it predicts what its trials predict in
    memory (the answer's time is measured by benchmarks/predict_speed.py, not asserted)."""
    url = f"sqlite:///{tmp_path / 'stored.db'}"
    records, config = write_synthetic_study(url)
    prediction = predict_hparams(2048, study="stored", storage=url)
    assert len(records) == 30 and prediction.target_width == 2048
    assert [width.width for width in prediction.evidence.widths] == [32, 64, 128]
    in_memory = predict_from_trials(records, config, 2048, study="stored")
    assert prediction.hparams == in_memory.hparams
    assert prediction.intervals == in_memory.intervals


def test_the_fit_window_holds_the_best_runs_neighbours_even_beyond_the_window():
    # the parabola is fitted to the runs within the window of the best one, and always to
    # its nearest LR on each side, so that an octave grid still brackets the minimum
    x = np.array([-10.0, -6.0, -5.5, -5.0, -2.0])
    assert fit_window(x, -5.5, 1.0).tolist() == [False, True, True, True, False]
    assert fit_window(x, -5.5, 0.25).tolist() == [False, True, True, True, False]
    assert fit_window(x, -5.5, 5.0).tolist() == [True] * 5
    # the neighbours come from the primary seed's LRs when the caller says so: another
    # seed's run between them is kept only inside the window
    primary = np.array([-10.0, -5.5, -2.0])
    assert fit_window(x, -5.5, 0.25, primary).tolist() == [True, False, True, False, True]
    # the best run at an edge has a neighbour on one side only
    assert fit_window(x, -10.0, 1.0).tolist() == [True, True, False, False, False]
