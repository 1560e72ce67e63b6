"""Reproduction studies: definitions, ``hptransfer study run`` and ``hptransfer study table``.

Everything runs on a tiny setting (one block, 32-token windows, 4 steps, two widths, the LR
octaves 2^-8 … 2^-6) written next to copies of the definitions, so a whole study trains in
a few seconds. The shipped definitions are only loaded and checked, never run here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny import TINY_MODEL_TOML

from hptransfer.cli import main
from hptransfer.errors import AblationError
from hptransfer.reproduction.ablation import Axis, definition_files, load_setting, load_study
from hptransfer.reproduction.study import load_result, run_study
from hptransfer.reproduction.table import tabulate, write_plot

STUDIES = Path(__file__).resolve().parent.parent / "studies"

TINY_SETTING = """
widths = [32, 64]
lr_exponents = [-8, -6]
steps = 4
eval_tokens = 1024
data = "{data}"

""" + TINY_MODEL_TOML


@pytest.fixture
def folder(tmp_path, text_file) -> Path:
    """A studies folder: the tiny setting, the shipped baseline and a tiny depth study."""
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "setting.toml").write_text(TINY_SETTING.format(data=text_file))
    shutil.copy(STUDIES / "baseline.toml", studies)
    (studies / "deep.toml").write_text(
        'title = "depth 1/2"\npaper = "absent"\naxis = "depth"\nvalues = [1, 2]\n'
        'width = 32\n[spec]\ndepth_rule = "completep"\nbase_depth = 1\n')
    return studies


def test_every_ablation_of_the_paper_has_a_definition():
    studies = {p.stem: load_study(p) for p in definition_files(STUDIES)}
    paper = {"baseline", "biases", "gains-vector", "gains-scalar", "embedding-norm",
             "zero-query", "sp-unembedding", "attention-sqrt-d", "swiglu", "squared-relu",
             "multi-query", "cosine", "wd-coupled", "wd-independent", "lion-relative",
             "lion-absolute", "batch-x4", "batch-div4", "full-sp"}
    assert paper <= set(studies)
    assert {"depth-completep", "depth-none", "horizon"} <= set(studies)
    setting = load_setting(STUDIES / "setting.toml")
    for name, study in studies.items():
        point = study.points[0]
        # one shared setting: every study trains on the same tokens at the same seed
        assert point.budget.tokens == setting.tokens() or study.axis is Axis.STEPS, name
        assert point.seed == setting.seed
    assert studies["full-sp"].points[0].spec.attention_scale.value == "1/sqrt(D)"
    assert studies["batch-x4"].lr_exponents[0] == setting.lr_exponents[0] + 1
    assert [p.spec.depth for p in studies["depth-completep"].points] == [2, 4, 8]


def test_bad_definitions_say_what_to_fix(folder):
    (folder / "typo.toml").write_text('title = "x"\npaper = "yes"\n[spec]\nnorm_gains = "x"\n')
    with pytest.raises(AblationError, match="typo.toml.*norm_gains"):
        load_study(folder / "typo.toml").points[0].spec  # noqa: B018
    (folder / "typo.toml").write_text('title = "x"\npaper = "maybe"\n')
    with pytest.raises(AblationError, match="paper"):
        load_study(folder / "typo.toml")
    with pytest.raises(AblationError, match="width studies only"):
        load_study(folder / "deep.toml", widths=(32,))
    with pytest.raises(AblationError, match="no study definition 'nope'.*baseline"):
        load_study("nope", folder=folder)


def test_run_records_json_table_and_rerun_trains_nothing(folder, tmp_path, monkeypatch):
    runner = CliRunner()
    storage = str(tmp_path / "studies.log")
    run = ["study", "run", str(folder / "baseline.toml"), "--storage", storage,
           "--threads", "1"]
    result = runner.invoke(main, run)
    assert result.exit_code == 0, result.output
    recorded = json.loads((folder / "results" / "baseline.json").read_text())
    cells = recorded["cells"]
    assert len(cells) == 6 and {c["width"] for c in cells} == {32, 64}
    assert {c["lr_exponent"] for c in cells} == {-8, -7, -6}
    assert {"width", "lr", "status", "val_loss", "flops", "wall_time_s"} <= set(cells[0])
    assert recorded["corpus_hash"].startswith("sha256:") and recorded["setting"]["steps"] == 4

    table = runner.invoke(main, ["study", "table", "baseline", "--studies", str(folder),
                                 "--markdown", "--out", str(tmp_path / "reports")])
    assert table.exit_code == 0, table.output
    assert "argmin" in table.output and "Transfer:" in table.output
    assert "| baseline | baseline µP |" in table.output
    assert (tmp_path / "reports" / "baseline_transfer.png").is_file()
    # the same table from the Optuna storage instead of the JSON
    stored = runner.invoke(main, ["study", "table", "baseline", "--studies", str(folder),
                                  "--storage", storage, "--out", str(tmp_path / "reports")])
    assert stored.exit_code == 0, stored.output
    assert "Transfer:" in stored.output

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr("hptransfer.training.loop.train", no_training)
    again = runner.invoke(main, run)
    assert again.exit_code == 0, again.output
    assert "6/6 cells recorded" in again.output


def test_depth_study_runs_one_study_per_depth(folder, tmp_path, tiny_corpus):
    study = load_study(folder / "deep.toml")
    assert [p.study for p in study.points] == ["deep.depth1", "deep.depth2"]
    result = run_study(study, results=folder / "results", storage=str(tmp_path / "d.log"),
                       corpus=tiny_corpus, threads=1)
    assert load_result(folder / "results" / "deep.json") == result
    assert sorted({(c.depth, c.width) for c in result.cells}) == [(1, 32), (2, 32)]
    table = tabulate(result)
    assert [row.value for row in table.rows] == [1, 2]
    assert all(row.argmin in (-8, -7, -6) for row in table.rows)
    assert table.transfer is not None and table.drift is not None
    low, high = table.drift_interval
    assert low <= table.drift <= high
    figure = write_plot(table, tmp_path / "reports")
    assert figure.name == "deep_transfer.png" and figure.stat().st_size > 0


def test_table_lists_studies_not_run_yet(folder, tmp_path):
    result = CliRunner().invoke(main, ["study", "table", "--studies", str(folder),
                                       "--out", str(tmp_path / "reports")])
    assert result.exit_code == 0, result.output
    assert result.output.count("not yet run") == 2


def test_the_papers_rule_is_also_read_at_its_two_octave_spacing():
    # the recorded baseline: argmin 2^-8 / 2^-7 / 2^-7 on our 1-octave grid, but on the
    # paper's points (2^-10, 2^-8, 2^-6, 2^-4) 2^-8 wins at every width; full SP moves on both
    baseline = tabulate(load_result(STUDIES / "results" / "baseline.json"))
    assert [r.argmin for r in baseline.rows] == [-8, -7, -7]
    assert [r.coarse_argmin for r in baseline.rows] == [-8, -8, -8]
    assert baseline.transfer is False and baseline.coarse_transfer is True
    sp = tabulate(load_result(STUDIES / "results" / "full-sp.json"))
    assert [r.coarse_argmin for r in sp.rows] == [-6, -6, -8]
    assert sp.transfer is False and sp.coarse_transfer is False
    assert sp.drift_interval[1] < 0 < baseline.drift_interval[1]


def test_a_setting_runs_on_text_with_its_tokenizer(folder, text_file):
    pytest.importorskip("tokenizers")
    from data_files import train_bpe

    from hptransfer.data.corpus import load_corpus

    (folder / "tok").mkdir()
    train_bpe(folder / "tok" / "tokenizer.json", Path(text_file).read_text(), vocab_size=300)
    setting = folder / "setting.toml"
    setting.write_text(setting.read_text().replace(
        "eval_tokens = 1024\n", 'eval_tokens = 1024\ntokenizer = "tok/tokenizer.json"\n'))
    study = load_study(folder / "baseline.toml")
    assert study.setting.tokenizer == str((folder / "tok" / "tokenizer.json").resolve())
    corpus = load_corpus(study.setting.source)
    config = study.points[0].config(corpus)
    assert corpus.vocab_size == 300 and config.spec.vocab == 300
    assert config.corpus_hash == corpus.content_hash != load_corpus(text_file).content_hash
    assert config.data.tokenizer == study.setting.tokenizer  # every worker tokenizes alike
    setting.write_text(setting.read_text().replace(f'data = "{text_file}"\n', ""))
    with pytest.raises(AblationError, match="tokenizer applies to a text corpus"):
        load_study(folder / "baseline.toml")
