"""docs/transfer.md's score table is what benchmarks/score_table.py makes of the recorded
results (studies/results/score_*.json): a figure in the docs cannot drift from its data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "studies" / "results"

# (label as in the docs, µP result, SP result)
PAIRS = [
    ("**after**, 256, s0", "score_mup_w256_s0.json", "score_sp_w256_s0.json"),
    ("**after**, 256, s1", "score_mup_w256_s1.json", "score_sp_w256_s1.json"),
    ("**after**, 512, s0", "score_mup_w512_s0.json", "score_sp_w512_s0.json"),
    ("**after**, 512, s1", "score_mup_w512_s1.json", "score_sp_w512_s1.json"),
    ("**after**, Perl modules, 256, s0", "score_perl_mup_w256_s0.json",
     "score_perl_sp_w256_s0.json"),
    ("**after**, Perl modules, 256, s1", "score_perl_mup_w256_s1.json",
     "score_perl_sp_w256_s1.json"),
]


def _score_table():
    spec = importlib.util.spec_from_file_location("score_table",
                                                  ROOT / "benchmarks" / "score_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_score_rows_are_the_recorded_results():
    table = _score_table().table([(label, RESULTS / m, RESULTS / s) for label, m, s in PAIRS])
    docs = (ROOT / "docs" / "transfer.md").read_text()
    for line in table.splitlines():
        assert line in docs, f"docs/transfer.md lacks (or has another version of):\n{line}"


def test_a_pair_of_different_settings_is_refused():
    score_table = _score_table()
    mup = {"target_width": 256, "seed": 0, "budget_tokens": 1, "corpus_hash": "a"}
    with pytest.raises(ValueError, match="differ in seed"):
        score_table.row("x", mup, {**mup, "seed": 1})
    with pytest.raises(ValueError, match="different corpora"):
        score_table.row("x", mup, {**mup, "corpus_hash": "b"})
