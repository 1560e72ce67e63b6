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


def _benchmark(name: str):
    """benchmarks/<name>.py as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _score_table():
    return _benchmark("score_table")


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


def _target_optimum():
    return _benchmark("target_optimum")


HALF_OCTAVES = RESULTS / "score_mup_w256_s1_half_octaves.json"


@pytest.mark.parametrize("name", [m for _, m, _ in PAIRS])
def test_the_re_read_optimum_at_two_octaves_is_the_benchmark_s_own(name):
    """benchmarks/target_optimum.py's ±2-octave window is the estimator that scored the
    benchmark: it must give back the recorded target optima, grid and all runs (the runs
    the benchmark made: the half-octave check came later)."""
    import json
    import math

    target_optimum = _target_optimum()
    result = json.loads((RESULTS / name).read_text())
    _, grid, every = target_optimum.read(result, [])
    assert target_optimum.optimum(grid, 2.0) == pytest.approx(
        math.log2(result["grid_optimum"]["lr"]), abs=1e-6)
    assert target_optimum.optimum(every, 2.0) == pytest.approx(
        math.log2(result["target_optimum_all_runs"]["lr"]), abs=1e-6)


def test_the_docs_re_read_optima_are_the_recorded_results():
    lines = _target_optimum().rows([RESULTS / m for _, m, _ in PAIRS], [HALF_OCTAVES])
    docs = (ROOT / "docs" / "transfer.md").read_text()
    for line in lines:
        assert line in docs, f"docs/transfer.md lacks (or has another version of):\n{line}"
