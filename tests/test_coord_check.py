"""Coordinate check (docs/spec.md §6): µP passes, SP fails, from the API and the CLI."""

from __future__ import annotations

import json

from click.testing import CliRunner

from hptransfer.checks.coord_check import coord_check
from hptransfer.cli import main

SMALL = dict(widths=(32, 64, 128, 256), steps=4, depth=2, seq_len=32, batch_size=4)


def test_mup_passes(tiny_corpus):
    report = coord_check(param="mup", corpus=tiny_corpus, **SMALL)
    assert report.passed, report.failures
    # the default readout (SP's 1/√M) gives width-independent logits at t = 1: no exemption
    (logits_t1,) = [g for g in report.growth if g.module == "logits" and g.step == 1]
    assert not logits_t1.exempt and 0.85 < logits_t1.per_doubling < 1.15


def test_mup_with_a_shrinking_readout_passes_with_its_predicted_exception(tiny_corpus):
    report = coord_check(param="mup", corpus=tiny_corpus, readout_init="sp-at-base", **SMALL)
    assert report.passed, report.failures
    # the predicted exception: logits shrink like 1/√M at t = 1 (before any update)
    (logits_t1,) = [g for g in report.growth if g.module == "logits" and g.step == 1]
    assert logits_t1.exempt and 0.6 < logits_t1.per_doubling < 0.8


def test_sp_fails_with_growing_hidden_activations(tiny_corpus):
    report = coord_check(param="sp", corpus=tiny_corpus, **SMALL)
    assert not report.passed
    grown = {(g.module, g.step) for g in report.failures}
    assert {("mlp", 2), ("mlp", 3), ("block", 3)} <= grown
    assert all(g.per_doubling > 1 for g in report.failures)  # SP blows up, never shrinks


def test_mup_abs_passes_at_its_own_lr_scale(tiny_corpus):
    report = coord_check(param="mup-abs", lr=2.0**-5 * 128, corpus=tiny_corpus, **SMALL)
    assert report.passed, report.failures
    # why the absolute rule's default readout shrinks as 1/m: with SP's 1/√M it fails
    sp_readout = coord_check(param="mup-abs", lr=2.0**-5 * 128, corpus=tiny_corpus,
                             readout_init="sp", **SMALL)
    assert {(g.module, g.step) for g in sp_readout.failures} == {("mlp", 3)}


def test_cli_exit_codes_and_files(tmp_path, text_file):
    runner = CliRunner()
    common = ["--widths", "32,64,128,256", "--steps", "4", "--data", text_file]
    ok = runner.invoke(main, ["coord-check", "--param", "mup", "--out", str(tmp_path), *common])
    assert ok.exit_code == 0, ok.output
    assert "PASS" in ok.output
    report = json.loads((tmp_path / "coord_check_mup.json").read_text())
    assert report["passed"] is True
    assert (tmp_path / "coord_check_mup.png").read_bytes()[:4] == b"\x89PNG"

    bad = runner.invoke(main, ["coord-check", "--param", "sp", "--out", str(tmp_path), *common])
    assert bad.exit_code == 1, bad.output
    assert "FAIL" in bad.output and "per doubling" in bad.output
    assert json.loads((tmp_path / "coord_check_sp.json").read_text())["passed"] is False
