"""Confirmation runs and the study report: ``hptransfer confirm`` and ``hptransfer report``.

The verdict logic is tested on synthetic run lists. One module-scoped fixture tunes a tiny
real study (widths 32 and 64, one block, 4 steps, 4 trials each) and confirms its prediction
at width 64 with three offsets; the other tests read that storage.
"""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from hptransfer.cli import main
from hptransfer.confirmation.runs import confirm, load_confirmation
from hptransfer.confirmation.verdict import (
    Confirmation,
    ConfirmationRun,
    ConfirmationVerdict,
    judge,
)
from hptransfer.study.attributes import study_names
from hptransfer.study.names import confirmation_study_name
from hptransfer.study.records import load_trials
from hptransfer.study.schema import TrialStatus
from hptransfer.study.search import SamplerKind

OFFSETS = (-1.0, 0.0, 1.0)


def runs(*pairs, status=None) -> list[ConfirmationRun]:
    """(offset, loss) pairs; loss None means diverged."""
    return [ConfirmationRun(offset=o, lr=2.0 ** (o - 6), loss=loss,
                            status=TrialStatus.DIVERGED if loss is None else TrialStatus.COMPLETE)
            for o, loss in pairs]


# ---- the verdict ----------------------------------------------------------------------------

def test_confirmed_within_tolerance():
    result = judge(runs((-1, 3.10), (-0.5, 3.008), (0, 3.01), (0.5, 3.02), (1, 3.2)))
    assert result.verdict is ConfirmationVerdict.CONFIRMED
    assert result.best_offset == -0.5 and result.regret == pytest.approx(0.002 / 3.008)


def test_optimum_higher_and_lower():
    higher = judge(runs((-1, 3.3), (-0.5, 3.2), (0, 3.1), (0.5, 3.0), (1, 3.05)))
    assert higher.verdict is ConfirmationVerdict.OPTIMUM_HIGHER and higher.best_offset == 0.5
    assert higher.regret == pytest.approx(0.1 / 3.0) and not higher.notes
    lower = judge(runs((-1, 3.05), (-0.5, 3.0), (0, 3.1), (0.5, None), (1, None)))
    assert lower.verdict is ConfirmationVerdict.OPTIMUM_LOWER and lower.best_offset == -0.5
    assert any("offset +0.5 diverged" in n for n in lower.notes)


def test_best_at_the_edge_says_so():
    edge = judge(runs((-1, 3.3), (0, 3.1), (1, 3.0)))
    assert edge.verdict is ConfirmationVerdict.OPTIMUM_HIGHER
    assert any("edge of the offsets" in n for n in edge.notes)


def test_inconclusive_when_the_prediction_did_not_complete():
    result = judge(runs((-1, 3.0), (0, None), (1, None)))
    assert result.verdict is ConfirmationVerdict.INCONCLUSIVE and result.regret is None
    assert any("predicted point did not complete (diverged)" in n for n in result.notes)
    alone = judge(runs((-1, None), (0, 3.0), (1, None)))
    assert alone.verdict is ConfirmationVerdict.INCONCLUSIVE


# ---- a real tiny study ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def confirmed(tmp_path_factory, tiny_corpus, tiny_study_config):
    """(storage URL, the first confirmation, the confirmation of a second call)."""
    from hptransfer.study.tune import tune
    from hptransfer.study.worker import LocalRunner

    folder = tmp_path_factory.mktemp("confirm")
    url = f"sqlite:///{folder / 'studies.db'}"
    config = tiny_study_config
    seen = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPTRANSFER_HOME", str(folder / "home"))
        tune(config, study="tiny", widths=(32, 64), trials=4, storage=url, corpus=tiny_corpus,
             runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
        first = confirm(64, study="tiny", storage=url, offsets=OFFSETS, threads=1,
                        on_run=seen.append)
        second = confirm(64, study="tiny", storage=url, offsets=OFFSETS, threads=1,
                         on_run=seen.append)
    return url, first, second, seen


def test_confirm_records_runs_beside_the_study(confirmed):
    import optuna

    url, first, _, seen = confirmed
    assert isinstance(first, Confirmation) and first.target_width == 64
    assert [r.offset for r in first.runs] == list(OFFSETS) and len(seen) == 3
    assert all(r.status is not TrialStatus.WAITING for r in first.runs)
    trials = optuna.load_study(study_name=confirmation_study_name("tiny", 64),
                               storage=url).get_trials()
    assert len(trials) == 3
    attrs = trials[0].user_attrs
    for key in ("width", "spec", "hparams", "status", "final_val_loss", "val_curve", "flops",
                "wall_time_s", "tokens_per_s", "corpus_hash", "offset"):
        assert key in attrs, key
    assert attrs["role"] == "confirmation" and attrs["width"] == 64
    # the confirmation study is not a proxy width of "tiny", nor a study of its own
    assert study_names(url) == {"tiny": [32, 64]}
    assert {r.study for r in load_trials("tiny", url)} == {"tiny.w32", "tiny.w64"}


def test_confirm_is_resumable_and_judged(confirmed):
    url, first, second, seen = confirmed
    assert len(seen) == 3  # the second call trained nothing
    assert second.runs == first.runs and second.verdict is first.verdict
    assert first.verdict in ConfirmationVerdict
    if first.verdict is not ConfirmationVerdict.INCONCLUSIVE:
        assert first.regret is not None and first.regret >= 0
    assert load_confirmation("tiny", 64, url).runs == first.runs
    assert load_confirmation("tiny", 128, url) is None


def test_report_writes_markdown_and_html(confirmed, tmp_path):
    from hptransfer.report.study_report import write_report

    url, first, _, _ = confirmed
    written = write_report("tiny", storage=url, out_dir=tmp_path)
    assert written.target_width == 64 and written.verdict == first.verdict.value
    page = written.html.read_text()
    assert page.count("data:image/png;base64,") == 2 and first.verdict.value in page
    markdown = written.markdown.read_text()
    assert "![µTransfer plot](tiny_transfer.png)" in markdown
    assert "tiny_optimum.png" in markdown and first.verdict.value in markdown
    assert all(path.stat().st_size > 0 for path in written.images)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.fixture
def runner(tmp_path, monkeypatch) -> CliRunner:
    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_cli_confirm_and_report(runner, confirmed, tmp_path):
    url, first, _, _ = confirmed
    result = runner.invoke(main, ["confirm", "--target-width", "64", "--study", "tiny",
                                  "--storage", url, "--offsets", "-1,0,1"])
    assert result.exit_code == 0, result.output
    assert f"verdict: {first.verdict.value}" in result.output
    result = runner.invoke(main, ["confirm", "--target-width", "64", "--study", "tiny",
                                  "--storage", url, "--offsets", "-1,0,1", "--json"])
    assert result.exit_code == 0, result.output
    assert Confirmation.model_validate_json(result.output).runs == first.runs
    result = runner.invoke(main, ["report", "--study", "tiny", "--storage", url,
                                  "--target-width", "64", "--out", "r"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "tiny_report.md").exists()
    assert (tmp_path / "r" / "tiny_report.html").exists()


@pytest.mark.parametrize("args, message", [
    (["confirm", "--target-width", "64", "--study", "nope"], "no study 'nope'"),
    (["confirm", "--target-width", "64", "--study", "nope", "--storage", "{url}"],
     "no study named 'nope'"),
    (["confirm", "--target-width", "64", "--study", "tiny", "--storage", "{url}",
      "--offsets", "-1,1"], "need 0"),
    (["confirm", "--target-width", "100", "--study", "tiny", "--storage", "{url}"],
     "head_dim"),
    (["report", "--study", "nope", "--storage", "{url}"], "no study named 'nope'"),
    (["report", "--study", "nope"], "no study 'nope'"),
])
def test_cli_bad_input_exits_2(runner, confirmed, args, message):
    url = confirmed[0]
    result = runner.invoke(main, [a.replace("{url}", url) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_runs_side_by_side_record_what_one_process_does(confirmed, tmp_path):
    """Two local processes train the runs of one confirmation (workers=2, one thread each):
    the same losses, bit for bit, as one process trained them."""
    import shutil

    url, first, _, _ = confirmed
    copy = tmp_path / "copy.db"
    shutil.copy(url.removeprefix("sqlite:///"), copy)
    copy_url = f"sqlite:///{copy}"
    import optuna

    optuna.delete_study(study_name=confirmation_study_name("tiny", 64), storage=copy_url)
    parallel = confirm(64, study="tiny", storage=copy_url, offsets=OFFSETS, threads=1,
                       workers=2)
    assert [(r.offset, r.lr, r.status, r.loss) for r in parallel.runs] == [
        (r.offset, r.lr, r.status, r.loss) for r in first.runs]
    assert parallel.verdict is first.verdict


def test_a_regret_inside_the_seed_noise_is_not_a_miss():
    from hptransfer.confirmation.verdict import noise_margin

    three = runs((-0.5, 3.00), (0, 3.03), (0.5, 3.10))  # regret 1%
    assert judge(three).verdict is ConfirmationVerdict.OPTIMUM_LOWER
    assert judge(three, noise=0.001).verdict is ConfirmationVerdict.OPTIMUM_LOWER  # 0.28%
    within = judge(three, noise=0.005)  # two runs differ by up to 1.41% from noise alone
    assert within.verdict is ConfirmationVerdict.CONFIRMED and within.regret == pytest.approx(
        0.01)
    assert any("seed noise" in n for n in within.notes)
    assert noise_margin(0.005) == pytest.approx(2 * math.sqrt(2) * 0.005)
    assert noise_margin(None) == 0.0


# ---- the score: the prediction against a grid-tuned SP model --------------------------------

def test_the_score_trains_an_sp_grid_and_compares_it_with_the_prediction(confirmed, tmp_path):
    import shutil

    import optuna

    from hptransfer.confirmation.score import load_score, score, tune_sp_baseline
    from hptransfer.mup.rules import hidden_lr
    from hptransfer.report.study_report import write_report
    from hptransfer.study.attributes import load_config
    from hptransfer.study.worker import LocalRunner
    from hptransfer.transfer import predict_hparams

    url, first, _, _ = confirmed
    copy = tmp_path / "studies.db"  # the module's storage stays as the other tests read it
    shutil.copy(url.removeprefix("sqlite:///"), copy)
    url = f"sqlite:///{copy}"
    assert load_score("tiny", 64, url) is None  # no baseline yet
    tune_sp_baseline(64, study="tiny", storage=url, points=3,
                     runner=LocalRunner(workers=1, threads=1))
    baseline = load_config("tiny.sp-baseline", url)
    assert baseline.spec.param.value == "sp" and baseline.spec.readout_init.value == "sp"
    # centred on the LR µP gives the target's hidden matrices, one octave each side
    prediction = predict_hparams(64, study="tiny", storage=url)
    centre = round(math.log2(hidden_lr(prediction.spec, prediction.hparams.lr)))
    result = score("tiny", 64, url)
    assert [math.log2(r.lr) for r in result.baseline] == [centre - 1, centre, centre + 1]
    assert all(r.loss is not None for r in result.baseline)
    at_prediction = next(r.loss for r in first.runs if r.offset == 0.0)
    best = min(r.loss for r in result.baseline)
    assert result.loss_at_prediction == at_prediction and result.baseline_loss == best
    assert result.gap == pytest.approx(at_prediction - best)
    assert result.verdict() in ("BETTER", "EQUAL", "WORSE") and "width 64" in result.summary()
    # the runs are trials like any other; running it again trains nothing
    trials = optuna.load_study(study_name="tiny.sp-baseline.w64", storage=url).get_trials()
    tune_sp_baseline(64, study="tiny", storage=url, points=3,
                     runner=LocalRunner(workers=1, threads=1))
    assert len(optuna.load_study(study_name="tiny.sp-baseline.w64",
                                 storage=url).get_trials()) == len(trials) == 3
    report = write_report("tiny", storage=url, target_width=64, out_dir=tmp_path / "r")
    assert "Score at width 64: against a grid-tuned SP model" in report.markdown.read_text()


def test_the_score_verdict_allows_for_the_seed_noise():
    from hptransfer.confirmation.score import BaselineRun, Score

    def scored(gap_fraction, noise=0.003, lrs=(2**-9, 2**-8, 2**-7), best=2**-8):
        runs = tuple(BaselineRun(lr=lr, loss=2.0, status="complete") for lr in lrs)
        return Score(study="s", target_width=256, predicted_lr=0.02,
                     loss_at_prediction=2.0 * (1 + gap_fraction), baseline=runs,
                     baseline_lr=best, baseline_loss=2.0, gap=2.0 * gap_fraction,
                     gap_fraction=gap_fraction, noise=noise,
                     edge=best in (lrs[0], lrs[-1]))

    assert scored(0.008).verdict() == "EQUAL"  # 2σ√2 of 0.3% is 0.85%
    assert scored(0.009).verdict() == "WORSE" and scored(-0.009).verdict() == "BETTER"
    assert scored(0.001, noise=None).verdict() == "WORSE"  # no noise measured: no margin
    assert "more --points" in scored(0.0, best=2**-7).summary()
    assert Score(study="s", target_width=256, predicted_lr=0.02, baseline=()).verdict() == "n/a"


def test_cli_score_runs_the_prediction_and_the_grid(runner, confirmed, tmp_path):
    import shutil

    url, _, _, _ = confirmed
    copy = tmp_path / "studies.db"
    shutil.copy(url.removeprefix("sqlite:///"), copy)
    result = runner.invoke(main, ["score", "--study", "tiny", "--storage", str(copy),
                                  "--target-width", "64", "--points", "3", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "SP lr" in result.output and "score: width 64" in result.output
    even = runner.invoke(main, ["score", "--study", "tiny", "--storage", str(copy),
                                "--target-width", "64", "--points", "4"])
    assert even.exit_code == 2 and "must be odd" in even.output
