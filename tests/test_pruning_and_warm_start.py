"""Pruners never judge the first half of a budget; warm starts enqueue what they promise;
YAML config files work like TOML ones."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from hptransfer.budget import Budget
from hptransfer.cli import main
from hptransfer.hparams import HParams
from hptransfer.space import SearchSpace
from hptransfer.spec import ModelSpec
from hptransfer.study.attributes import load_config
from hptransfer.study.config import StudyConfig
from hptransfer.study.records import load_trials
from hptransfer.study.schema import TrialStatus
from hptransfer.study.search import Pruning, SamplerKind, WarmStart, warm_start_lrs
from hptransfer.study.tune import tune
from hptransfer.study.worker import LocalRunner


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HPTRANSFER_THREADS", "1")
    monkeypatch.chdir(tmp_path)


def _config(tiny_corpus, *, steps=24, lr=(2.0**-12, 2.0**-2)) -> StudyConfig:
    return StudyConfig(
        spec=ModelSpec(width=32, depth=1, seq_len=32, base_width=32),
        budget=Budget(steps=steps, eval_every=3, eval_tokens=512),
        space=SearchSpace(lr=lr, base=HParams(batch_size=4)),
        corpus_hash=tiny_corpus.content_hash)


@pytest.mark.parametrize("pruning", [Pruning.MEDIAN, Pruning.HYPERBAND])
def test_pruners_stop_trials_only_in_the_second_half(tiny_corpus, tmp_path, pruning):
    config = _config(tiny_corpus)
    tune(config, study="p", widths=(32,), trials=10, pruning=pruning, corpus=tiny_corpus,
         storage=str(tmp_path / "s.db"), runner=LocalRunner(workers=1, threads=1),
         sampler=SamplerKind.TPE)
    records = load_trials("p", str(tmp_path / "s.db"))
    pruned = [r for r in records if r.status is TrialStatus.PRUNED]
    half = config.tokens_per_trial() // 2
    for record in pruned:
        # the last reported point is where it was stopped: never in the first half
        assert record.val_curve[-1].tokens >= half, record
    if pruning is Pruning.MEDIAN:
        # 2^-12 and 2^-10 barely learn in 24 steps: the median pruner must catch some trial
        assert pruned, [(r.hparams.lr, r.final_val_loss) for r in records]
    assert sum(r.finished for r in records) == 10


def test_pruned_trials_are_not_optima(tiny_corpus, tmp_path):
    config = _config(tiny_corpus)
    result = tune(config, study="p", widths=(32,), trials=10, pruning=Pruning.MEDIAN,
                  corpus=tiny_corpus, storage=str(tmp_path / "s.db"),
                  runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
    best = result.best(32)
    records = load_trials("p", str(tmp_path / "s.db"))
    assert records[best.best_number].status is TrialStatus.COMPLETE


def test_warm_start_previous_enqueues_the_best_lrs_of_the_previous_width(tiny_corpus,
                                                                          tmp_path):
    config = _config(tiny_corpus, steps=6, lr=(2.0**-8, 2.0**-4))
    storage = str(tmp_path / "s.db")
    tune(config, study="w", widths=(32, 64), trials=5, corpus=tiny_corpus, storage=storage,
         warm_start=WarmStart.OCTAVES_AND_PREVIOUS, runner=LocalRunner(workers=1, threads=1),
         sampler=SamplerKind.TPE)
    records = load_trials("w", storage)
    w32 = sorted((r for r in records if r.width == 32 and r.status is TrialStatus.COMPLETE),
                 key=lambda r: r.final_val_loss)
    w64 = sorted((r for r in records if r.width == 64), key=lambda r: r.number)
    grid = warm_start_lrs(config)
    assert sorted(grid) == config.space.lr_octaves(step=2)
    # the width-64 study runs the grid first, then the previous width's best LRs
    assert [r.hparams.lr for r in w64[:len(grid)]] == grid
    assert [r.hparams.lr for r in w64[len(grid):5]] == [r.hparams.lr for r in w32[:2]]


def test_no_warm_start_enqueues_nothing(tiny_corpus, tmp_path):
    config = _config(tiny_corpus, steps=4)
    tune(config, study="n", widths=(32,), trials=2, corpus=tiny_corpus,
         storage=str(tmp_path / "s.db"), warm_start=WarmStart.NONE,
         runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
    records = load_trials("n", str(tmp_path / "s.db"))
    assert len(records) == 2 and all(r.status is TrialStatus.COMPLETE for r in records)


def test_yaml_config_file(tmp_path, text_file):
    pytest.importorskip("yaml")
    config = tmp_path / "tune.yaml"
    config.write_text(f"""\
tune:
  study: y
  widths: [32]
  trials: 2
  data: {text_file}
  warm_start: none
spec: {{depth: 1, seq_len: 32, base_width: 32}}
hparams: {{batch_size: 4}}
space: {{weight_decay: "off", batch_sizes: "off"}}
budget: {{steps: 3, eval_every: 3, eval_tokens: 256}}
""")
    result = CliRunner().invoke(main, ["tune", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    stored = load_config("y", None)
    assert stored.space.weight_decay is None and stored.space.batch_sizes is None
    assert stored.budget.steps == 3 and stored.spec.depth == 1


def test_more_widths_later_resume_the_same_study(tiny_corpus, tmp_path):
    """The spec template is stored at base width, so `--widths 32` then `--widths 32,64`
    is one study; a different setting is refused before any trial runs."""
    from hptransfer.errors import StudyError
    from hptransfer.study.config import study_config

    storage = str(tmp_path / "s.db")
    spec = ModelSpec(width=32, depth=1, seq_len=32, base_width=32)
    budget = Budget(steps=3, eval_every=3, eval_tokens=256)
    space = SearchSpace(base=HParams(batch_size=4))
    first = study_config(spec=spec, space=space, budget=budget, corpus=tiny_corpus)
    second = study_config(spec=spec.model_copy(update={"width": 64}), space=space,
                          budget=budget, corpus=tiny_corpus)
    assert first == second
    run = dict(study="m", trials=1, corpus=tiny_corpus, storage=storage,
               warm_start=WarmStart.NONE, runner=LocalRunner(workers=1, threads=1))
    tune(first, widths=(32,), **run, sampler=SamplerKind.TPE)
    tune(second, widths=(32, 64), **run, sampler=SamplerKind.TPE)
    assert {r.width for r in load_trials("m", storage)} == {32, 64}
    other = study_config(spec=spec.model_copy(update={"depth": 2}), space=space,
                         budget=budget, corpus=tiny_corpus)
    with pytest.raises(StudyError, match="different spec"):
        tune(other, widths=(128,), **run, sampler=SamplerKind.TPE)
    assert {r.width for r in load_trials("m", storage)} == {32, 64}  # nothing ran


def test_warm_start_grid_runs_centre_first(tiny_corpus):
    """Fewer trials than grid points still bracket the bowl."""
    config = _config(tiny_corpus)  # LR range 2^-12 … 2^-2
    assert [round(math.log2(lr)) for lr in warm_start_lrs(config)] == [
        -8, -6, -10, -4, -12, -2]
