"""Shared fixtures: tiny real models on a small, deterministic synthetic corpus."""

from __future__ import annotations

import os
import random

import pytest
from ray_cluster import ray_cluster  # noqa: F401  (the session's Ray cluster fixture)

# Tiny models gain nothing from a second thread, and a fixed thread count keeps results
# bit-for-bit reproducible.
os.environ.setdefault("HPTRANSFER_THREADS", "1")

_WORDS = ("def class return import self value index list dict none true false for in if "
          "else while yield lambda with as try except raise pass break continue").split()


def synthetic_text(n_lines: int = 4000, seed: int = 0) -> str:
    """Python-like text from a fixed grammar: learnable structure, identical on every machine
    (unlike the built-in corpus, which depends on the interpreter's standard library)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        indent = "    " * rng.randint(0, 2)
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 7)))
        lines.append(f"{indent}{words}({i % 17}, {rng.randint(0, 9)}):")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("corpus") / "synthetic.txt"
    path.write_text(synthetic_text())
    return str(path)


@pytest.fixture(scope="session")
def tiny_corpus(text_file):
    from hptransfer.data.corpus import load_corpus

    return load_corpus(text_file)


@pytest.fixture
def tiny_spec():
    from hptransfer.spec import ModelSpec

    return ModelSpec(width=32, depth=2, head_dim=16, seq_len=32, base_width=32)


@pytest.fixture(scope="session")
def tiny_study_config(tiny_corpus, text_file):
    """A study of tiny proxies (one block, 32-token windows, 4 steps, the LR grid 2^-8, 2^-6,
    2^-4): what the predictor and confirmation tests tune once and read back."""
    from hptransfer.budget import Budget
    from hptransfer.hparams import HParams
    from hptransfer.space import SearchSpace
    from hptransfer.spec import ModelSpec
    from hptransfer.study.config import StudyConfig

    return StudyConfig(
        spec=ModelSpec(width=32, depth=1, head_dim=16, seq_len=32, base_width=32),
        budget=Budget(steps=4, eval_every=2, eval_tokens=1024),
        space=SearchSpace(lr=(2.0**-8, 2.0**-4), base=HParams(batch_size=4)),
        corpus_hash=tiny_corpus.content_hash, data=text_file)
