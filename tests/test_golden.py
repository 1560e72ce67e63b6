"""A pinned golden loss curve of the tiny "debug" model (torchtitan keeps one the same way).

The debug model is µP at its base width (M = M₀ = 32, depth 2, D = 16, T = 32), trained
40 steps at α = 2^-6, batch 8, on the synthetic corpus of ``conftest.synthetic_text``
(identical on every machine), seed 0, one thread. Its 4 validation losses and its training
curve must match ``tests/assets/golden_debug_curve.json`` within rtol 2e-3: exact equality
is not expected across CPUs and torch versions (different kernels round differently), but
any change to the model, the init, the optimizer, the schedule or the data shows up far
above that tolerance.

If a change to the training maths is *intended*, regenerate the asset and commit it with
the change, saying why the curve moved::

    python tests/test_golden.py --regenerate

(with the project's environment, e.g. ``.venv/bin/python``). The asset records the torch
version and date it was generated with.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import tempfile
from pathlib import Path

from hptransfer.budget import Budget
from hptransfer.data.corpus import Corpus, load_corpus
from hptransfer.hparams import HParams
from hptransfer.record import RunRecord, Status
from hptransfer.spec import ModelSpec
from hptransfer.train.loop import train

ASSET = Path(__file__).parent / "assets" / "golden_debug_curve.json"
RTOL = 2e-3

SPEC = ModelSpec(width=32, depth=2, head_dim=16, seq_len=32, base_width=32, param="mup")
HPARAMS = HParams(lr=2.0**-6, batch_size=8)
BUDGET = Budget(steps=40, eval_every=10, eval_tokens=2048)
SEED = 0
THREADS = 1


def run_debug_model(corpus: Corpus) -> RunRecord:
    return train(SPEC, HPARAMS, BUDGET, corpus, seed=SEED, threads=THREADS)


def _curve(record: RunRecord) -> dict[str, object]:
    return {
        "val_steps": [point.step for point in record.val_curve],
        "val_losses": [point.loss for point in record.val_curve],
        "train_steps": [point.step for point in record.train_curve],
        "train_losses": [point.loss for point in record.train_curve],
    }


def _close(actual: list[float], expected: list[float]) -> list[str]:
    """Indices and values that differ by more than RTOL (relative to the golden value)."""
    return [f"[{i}] {a:.6f} vs golden {e:.6f} ({(a - e) / e:+.2e})"
            for i, (a, e) in enumerate(zip(actual, expected, strict=True))
            if abs(a - e) > RTOL * abs(e)]


def test_debug_model_matches_golden_curve(tiny_corpus: Corpus) -> None:
    golden = json.loads(ASSET.read_text())
    assert tiny_corpus.content_hash == golden["corpus_content_hash"], (
        "the synthetic corpus in tests/conftest.py changed; regenerate the golden curve "
        "with: python tests/test_golden.py --regenerate")

    record = run_debug_model(tiny_corpus)
    assert record.status is Status.COMPLETE, record.reason
    curve = _curve(record)
    assert curve["val_steps"] == golden["val_steps"] == [10, 20, 30, 40]
    assert curve["train_steps"] == golden["train_steps"]
    hint = (f"(golden from torch {golden['torch']} on {golden['generated']}; if the change "
            f"is intended: python tests/test_golden.py --regenerate)")
    bad = _close(curve["val_losses"], golden["val_losses"])
    assert not bad, f"validation losses moved {hint}:\n" + "\n".join(bad)
    bad = _close(curve["train_losses"], golden["train_losses"])
    assert not bad, f"training losses moved {hint}:\n" + "\n".join(bad)


def test_golden_curve_decreases() -> None:
    """The pinned curve is worth pinning: the debug model learns."""
    golden = json.loads(ASSET.read_text())
    val, train_losses = golden["val_losses"], golden["train_losses"]
    assert all(b < a for a, b in zip(val, val[1:], strict=False)), val
    assert sum(train_losses[-5:]) / 5 < sum(train_losses[:5]) / 5 - 0.5, train_losses
    assert len(train_losses) == BUDGET.steps  # one point per step at this length


def regenerate() -> None:
    """Train the debug model and write the asset (imports conftest for the corpus text)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from conftest import synthetic_text

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "synthetic.txt"
        path.write_text(synthetic_text())
        corpus = load_corpus(path)
        record = run_debug_model(corpus)
    if record.status is not Status.COMPLETE:
        raise SystemExit(f"the debug run did not complete: {record.reason}")
    asset = {
        "description": "golden loss curve of the tiny debug model; see tests/test_golden.py",
        "regenerate": "python tests/test_golden.py --regenerate",
        "generated": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": record.provenance.processor,
        "corpus_content_hash": corpus.content_hash,
        "spec": SPEC.model_dump(mode="json"),
        "hparams": HPARAMS.model_dump(mode="json"),
        "budget": BUDGET.model_dump(mode="json"),
        "seed": SEED,
        "threads": THREADS,
        **_curve(record),
    }
    ASSET.parent.mkdir(parents=True, exist_ok=True)
    ASSET.write_text(json.dumps(asset, indent=2) + "\n")
    print(f"wrote {ASSET}: validation losses {asset['val_losses']}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        raise SystemExit(f"usage: python {sys.argv[0]} --regenerate")
    regenerate()
