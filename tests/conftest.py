"""Shared fixtures: tiny real models on a small, deterministic synthetic corpus."""

from __future__ import annotations

import os
import random

import pytest

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
    from hptransfer.corpus import load_corpus

    return load_corpus(text_file)


@pytest.fixture
def tiny_spec():
    from hptransfer.spec import ModelSpec

    return ModelSpec(width=32, depth=2, head_dim=16, seq_len=32, base_width=32)
