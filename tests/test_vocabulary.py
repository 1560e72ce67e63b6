"""A target with another vocabulary than its proxies (hptransfer.transfer.vocabulary):
warned with the measured effect where the measurement supports it, refused with the fix
where it does not, and the measured figures are the recorded ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from hptransfer.cli import main
from hptransfer.errors import PredictionError
from hptransfer.transfer import vocabulary
from hptransfer.transfer.rules import Notes
from hptransfer.transfer.vocabulary import (
    MEASURED,
    ON_TARGET_TOKENIZER,
    VocabularyMismatch,
    VocabularyShift,
    judge_vocabulary,
)

RESULTS = Path(__file__).resolve().parent.parent / "studies" / "results"
GOOD = VocabularyShift(256, 8192, (0.1, 0.2), (0.001, 0.004), "good.json")
BAD = VocabularyShift(256, 32768, (0.9, 0.2), (0.03, 0.004), "bad.json")


def test_the_same_vocabulary_says_nothing():
    notes = Notes()
    judge_vocabulary(256, None, notes)
    judge_vocabulary(256, 256, notes)
    assert not notes.warnings and not notes.rules


def test_a_measured_change_that_transfers_is_a_warning_with_the_numbers(monkeypatch):
    monkeypatch.setattr(vocabulary, "MEASURED", (GOOD, BAD))
    notes = Notes()
    judge_vocabulary(256, 5000, notes)  # within the 8k measurement
    (warning,) = notes.warnings
    assert "vocabulary (5,000) is not the proxies' (256)" in warning
    assert "0.10/0.20 octave" in warning and "+0.10%/+0.40%" in warning


def test_a_change_measured_not_to_transfer_or_never_measured_is_refused(monkeypatch):
    monkeypatch.setattr(vocabulary, "MEASURED", (GOOD, BAD))
    with pytest.raises(PredictionError, match="outside the benchmark's tolerance.*--tokenizer"):
        judge_vocabulary(256, 20000, Notes())  # covered by the 32k one, which failed
    with pytest.raises(PredictionError, match="no measurement covers.*256 → 8192"):
        judge_vocabulary(256, 128256, Notes())  # larger than any measured
    with pytest.raises(PredictionError, match="no measurement covers"):
        judge_vocabulary(8192, 32768, Notes())  # proxies that are not byte-level
    notes = Notes()
    judge_vocabulary(256, 128256, notes, VocabularyMismatch.ACCEPT)
    assert "predicting anyway" in notes.warnings[0]


def test_another_tokenizer_of_the_same_size_is_a_change_too():
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    notes = Notes()
    judge_vocabulary(8192, 8192, notes, proxy_tokenizer=a, target_tokenizer=a)  # the same
    judge_vocabulary(8192, None, notes, proxy_tokenizer=None, target_tokenizer=b)  # unknown
    assert not notes.warnings
    with pytest.raises(PredictionError, match="tokenizer .* is not the proxies'.*8,192 tokens"):
        judge_vocabulary(8192, 8192, Notes(), proxy_tokenizer=a, target_tokenizer=b)
    judge_vocabulary(8192, 8192, notes, VocabularyMismatch.ACCEPT, proxy_tokenizer=a,
                     target_tokenizer=b)
    assert "predicting anyway" in notes.warnings[0]


def _loss_gap(run: dict) -> float:
    """(loss at the prediction − the target grid's best) / best, signed (negative: the run at
    the prediction beat every grid point; the file's ``regret`` clamps it at 0)."""
    best = run["grid_optimum"]["best_grid_loss"]
    return (run["loss_at_prediction"] - best) / best


def test_the_measured_figures_are_the_recorded_ones():
    assert MEASURED, "the vocabulary measurement is recorded"
    assert ON_TARGET_TOKENIZER, "the fix's measurement is recorded"
    for shift in MEASURED + ON_TARGET_TOKENIZER:
        runs = [json.loads((RESULTS / name).read_text()) for name in shift.results.split()]
        assert len(runs) == len(shift.lr_error_octaves) == len(shift.loss_gap)
        for run, error, gap in zip(runs, shift.lr_error_octaves, shift.loss_gap, strict=True):
            assert run["vocab"] == shift.proxy_vocab
            target = run["target_data"] or {"vocab": run["vocab"]}  # None: the proxies' own
            assert target["vocab"] == shift.target_vocab
            assert run["lr_error_octaves"] == pytest.approx(error, abs=0.005)
            assert _loss_gap(run) == pytest.approx(gap, abs=5e-5)
    # the same-tokenizer files are exactly ON_TARGET_TOKENIZER's, the others MEASURED's
    recorded = {p.name for p in RESULTS.glob("vocab_bpe*_w256_s*.json")}
    assert recorded == {n for s in ON_TARGET_TOKENIZER for n in s.results.split()}


def test_the_refusal_gives_the_fixs_measured_accuracy():
    with pytest.raises(PredictionError, match=r"tune the proxies on the target's tokenizer "
                                              r"\(measured on BPE tokenizers of 8,192 and "
                                              r"32,768 tokens: LR error at most 0\.15 octave"):
        judge_vocabulary(256, 32768, Notes())


def _docs_row(run: dict) -> str:
    """The row docs/transfer.md gives a recorded vocabulary run: byte-level proxies and a
    BPE target (run["target_data"]), or proxies and target on one BPE tokenizer."""
    predicted, grid = run["predicted"], run["grid_optimum"]
    target = (f"2^{math.log2(grid['lr']):.2f} (best grid point "
              f"2^{math.log2(grid['best_grid_lr']):g}) | {run['lr_error_octaves']:.2f} | "
              f"{run['loss_at_prediction']:.4f} vs {grid['best_grid_loss']:.4f}: "
              f"{100 * _loss_gap(run):+.2f}%".replace(": -", ": \u2212"))  # the docs' minus
    alpha = f"2^{math.log2(predicted['lr']):.2f}"
    if run["target_data"] is not None:
        return f"| {run['target_data']['vocab'] // 1024}k, {run['seed']} | {alpha} | {target} |"
    return (f"| {run['vocab'] // 1024}k, {run['seed']} | {alpha} "
            f"({predicted['weight_decay']:.2g}, {predicted['batch_size']}) | {target} | "
            f"{run['compute_ratio']:.3f} |")


def test_the_docs_vocabulary_tables_are_the_recorded_files():
    # every recorded vocabulary run is a row of docs/transfer.md, with the file's numbers
    docs = (RESULTS.parent.parent / "docs" / "transfer.md").read_text()
    paths = sorted(RESULTS.glob("vocab_*.json"))
    assert len(paths) >= 6
    for path in paths:
        row = _docs_row(json.loads(path.read_text()))
        assert row in docs, f"{path.name}: docs/transfer.md lacks the row {row}"


@pytest.fixture
def runner(tmp_path, monkeypatch) -> CliRunner:
    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_cli_predict_reads_the_target_vocabulary(runner, tmp_path, tiny_corpus,
                                                  tiny_study_config, monkeypatch):
    from hptransfer.study.tune import tune
    from hptransfer.study.worker import LocalRunner

    url = f"sqlite:///{tmp_path / 's.db'}"
    tune(tiny_study_config, study="v", widths=(32, 64), trials=3, storage=url,
         corpus=tiny_corpus, runner=LocalRunner(workers=1, threads=1))
    proxy_vocab = tiny_study_config.spec.vocab
    base = ["predict", "--target-width", "128", "--study", "v", "--storage", url]
    refused = runner.invoke(main, [*base, "--target-vocab", "128256"])
    assert refused.exit_code == 2, refused.output
    assert "tune the proxies on the target's tokenizer" in refused.output
    accepted = runner.invoke(main, [*base, "--target-vocab", "128256", "--vocab-mismatch",
                                    "accept", "--json"])
    assert accepted.exit_code == 0, accepted.output
    prediction = json.loads(accepted.output)
    assert prediction["spec"]["vocab"] == 128256  # the snippet builds the target's model
    assert any("predicting anyway" in w for w in prediction["warnings"])
    same = runner.invoke(main, [*base, "--target-vocab", str(proxy_vocab), "--json"])
    assert same.exit_code == 0 and json.loads(same.output)["spec"]["vocab"] == proxy_vocab
    missing = runner.invoke(main, [*base, "--target-tokenizer", str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "is not a file" in missing.output
