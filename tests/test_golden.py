"""Pinned golden loss curves of tiny models (torchtitan keeps one the same way).

Three cases, each trained 40 steps at α = 2^-6, batch 8, on the synthetic corpus of
``conftest.synthetic_text`` (identical on every machine), seed 0, one thread:

- ``debug``: µP with Lingle's constants (the ``lingle`` preset: attention 1/D, readout init
  std 1/M) at its base width (M = M₀ = 32, depth 2, D = 16, T = 32);
  ``tests/assets/golden_debug_curve.json``.
- ``mup-m2``: the same model at width multiplier m = 2 (M = 64, M₀ = 32), where µP's
  per-tensor LRs (α/m on the hidden and readout matrices) are what is pinned;
  ``tests/assets/golden_mup_m2_curve.json``. A fourth run checks that the pin depends on
  them: the same model with one global LR (SP with the same attention scale and readout
  init, so the init is identical) gives a curve far outside the tolerance.
- ``default-m2``: the same width under µP's default constants (SP's at the base width:
  attention 1/√D, readout init std 1/√M); ``tests/assets/golden_default_m2_curve.json``.
  At m = 1 the default is SP bit for bit (tests/test_parametrization.py).

Each case's 4 validation losses and its training curve must match its asset within rtol
2e-3: exact equality is not expected across CPUs and torch versions (different kernels
round differently), but any change to the model, the init, the optimizer, the schedule or
the data shows up far above that tolerance.

If a change to the training maths is *intended*, regenerate the assets and commit them with
the change, saying why the curves moved::

    python tests/test_golden.py --regenerate

(with the project's environment, e.g. ``.venv/bin/python``). It trains every case and
rewrites the assets whose curve no longer matches within the tolerance (or whose case
changed); an asset the current code still reproduces is left as it is, so regenerating
never churns a curve that did not move. Each asset records the torch version and date it
was generated with.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from hptransfer.budget import Budget
from hptransfer.data.corpus import Corpus, load_corpus
from hptransfer.hparams import HParams
from hptransfer.record import RunRecord, Status
from hptransfer.spec import ModelSpec, Parametrization, Preset
from hptransfer.training.loop import train

ASSETS = Path(__file__).parent / "assets"
RTOL = 2e-3
REGENERATE = "python tests/test_golden.py --regenerate"

HPARAMS = HParams(lr=2.0**-6, batch_size=8)
BUDGET = Budget(steps=40, eval_every=10, eval_tokens=2048)
SEED = 0
THREADS = 1


@dataclass(frozen=True)
class GoldenCase:
    """One pinned curve: a spec trained with the shared hparams, budget, seed and threads."""

    name: str
    spec: ModelSpec
    asset: Path
    description: str

    def run(self, corpus: Corpus, spec: ModelSpec | None = None) -> RunRecord:
        return train(spec or self.spec, HPARAMS, BUDGET, corpus, seed=SEED, threads=THREADS)


DEBUG = GoldenCase(
    "debug",
    ModelSpec(width=32, depth=2, head_dim=16, seq_len=32, base_width=32, param="mup",
              **Preset.LINGLE.fields),
    ASSETS / "golden_debug_curve.json",
    "golden loss curve of the tiny debug model; see tests/test_golden.py")
MUP_M2 = GoldenCase(
    "mup-m2",
    ModelSpec(width=64, depth=2, head_dim=16, seq_len=32, base_width=32, param="mup",
              **Preset.LINGLE.fields),
    ASSETS / "golden_mup_m2_curve.json",
    "golden loss curve of the tiny model under µP at width multiplier m = 2; "
    "see tests/test_golden.py")
DEFAULT_M2 = GoldenCase(
    "default-m2",
    ModelSpec(width=64, depth=2, head_dim=16, seq_len=32, base_width=32, param="mup"),
    ASSETS / "golden_default_m2_curve.json",
    "golden loss curve of the tiny model under µP with the default constants (SP's at the "
    "base width) at width multiplier m = 2; see tests/test_golden.py")
CASES = (DEBUG, MUP_M2, DEFAULT_M2)
by_case = pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])


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


def _moved(curve: dict[str, object], golden: dict[str, object]) -> list[str]:
    """Why ``curve`` does not match ``golden`` (steps differ, or losses beyond RTOL)."""
    problems = [f"{key} differ: {curve[key]} vs golden {golden[key]}"
                for key in ("val_steps", "train_steps") if curve[key] != golden[key]]
    if problems:
        return problems
    return ([f"validation loss {line}" for line in _close(curve["val_losses"],
                                                           golden["val_losses"])]
            + [f"training loss {line}" for line in _close(curve["train_losses"],
                                                          golden["train_losses"])])


@by_case
def test_model_matches_golden_curve(tiny_corpus: Corpus, case: GoldenCase) -> None:
    golden = json.loads(case.asset.read_text(encoding="utf-8"))
    assert tiny_corpus.content_hash == golden["corpus_content_hash"], (
        f"the synthetic corpus in tests/conftest.py changed; regenerate the golden curves "
        f"with: {REGENERATE}")
    assert ModelSpec.model_validate(golden["spec"]) == case.spec, (
        f"{case.asset.name} pins another spec than the {case.name} case; {REGENERATE}")

    record = case.run(tiny_corpus)
    assert record.status is Status.COMPLETE, record.reason
    curve = _curve(record)
    assert golden["val_steps"] == [10, 20, 30, 40]
    hint = (f"(golden from torch {golden['torch']} on {golden['generated']}; if the change "
            f"is intended: {REGENERATE})")
    bad = _moved(curve, golden)
    assert not bad, f"the {case.name} curve moved {hint}:\n" + "\n".join(bad)


@by_case
def test_golden_curve_decreases(case: GoldenCase) -> None:
    """The pinned curve is worth pinning: the model learns."""
    golden = json.loads(case.asset.read_text(encoding="utf-8"))
    val, train_losses = golden["val_losses"], golden["train_losses"]
    assert all(b < a for a, b in zip(val, val[1:], strict=False)), val
    assert sum(train_losses[-5:]) / 5 < sum(train_losses[:5]) / 5 - 0.5, train_losses
    assert len(train_losses) == BUDGET.steps  # one point per step at this length


def test_m2_curve_depends_on_mup_per_tensor_lr(tiny_corpus: Corpus) -> None:
    """At m = 2 the pinned curve is µP's, not that of one global LR: the same model under SP
    with µP's attention scale (1/D) and readout init (std 1/M) has the same init and
    forward pass, so only the per-tensor LRs differ, and its curve is far off the pin."""
    from hptransfer.models.transformer import Transformer

    assert MUP_M2.spec.width_multiplier == 2.0
    global_lr = MUP_M2.spec.model_copy(update={"param": Parametrization.SP})
    assert ModelSpec.model_validate(global_lr.model_dump()) == global_lr
    assert global_lr.attention_scale.value == "1/D" and global_lr.readout_init.value == "mup"
    mup_model, sp_model = Transformer(MUP_M2.spec), Transformer(global_lr)
    for (name, a), (_, b) in zip(mup_model.state_dict().items(),
                                 sp_model.state_dict().items(), strict=True):
        assert a.equal(b), f"{name} is initialised differently"

    golden = json.loads(MUP_M2.asset.read_text(encoding="utf-8"))
    record = MUP_M2.run(tiny_corpus, global_lr)
    assert record.status is Status.COMPLETE, record.reason
    val = [point.loss for point in record.val_curve]
    far = _close(val, golden["val_losses"])
    assert len(far) == len(val), (
        f"one global LR gives validation losses {val} within rtol {RTOL} of µP's pinned "
        f"{golden['val_losses']}: the m = 2 curve would not pin the per-tensor LR")
    assert all(abs(a - e) > 10 * RTOL * e
               for a, e in zip(val, golden["val_losses"], strict=True)), (val, golden)


def _asset(case: GoldenCase, record: RunRecord, corpus: Corpus) -> dict[str, object]:
    import torch

    return {
        "description": case.description,
        "regenerate": REGENERATE,
        "generated": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": record.provenance.processor,
        "corpus_content_hash": corpus.content_hash,
        "spec": case.spec.model_dump(mode="json"),
        "hparams": HPARAMS.model_dump(mode="json"),
        "budget": BUDGET.model_dump(mode="json"),
        "seed": SEED,
        "threads": THREADS,
        **_curve(record),
    }


def _still_pinned(case: GoldenCase, record: RunRecord, corpus: Corpus) -> bool:
    """Whether the existing asset already pins this run: same corpus, same case, and the
    curve within the tolerance (rewriting it would only churn the date and the last bits)."""
    if not case.asset.exists():
        return False
    golden = json.loads(case.asset.read_text(encoding="utf-8"))
    same_case = (golden.get("corpus_content_hash") == corpus.content_hash
                 and ModelSpec.model_validate(golden["spec"]) == case.spec
                 and HParams.model_validate(golden["hparams"]) == HPARAMS
                 and Budget.model_validate(golden["budget"]) == BUDGET
                 and (golden["seed"], golden["threads"]) == (SEED, THREADS))
    return same_case and not _moved(_curve(record), golden)


def regenerate() -> None:
    """Train every case and write the assets whose curve moved (imports conftest for the
    corpus text)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import synthetic_text

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "synthetic.txt"
        path.write_text(synthetic_text())
        corpus = load_corpus(path)
        records = [(case, case.run(corpus)) for case in CASES]
    for case, record in records:
        if record.status is not Status.COMPLETE:
            raise SystemExit(f"the {case.name} run did not complete: {record.reason}")
    for case, record in records:
        losses = [round(point.loss, 6) for point in record.val_curve]
        if _still_pinned(case, record, corpus):
            print(f"kept {case.asset}: it still matches within rtol {RTOL} "
                  f"(validation losses {losses})")
            continue
        case.asset.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_asset(case, record, corpus), indent=2, ensure_ascii=False)
        case.asset.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {case.asset}: validation losses {losses}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        raise SystemExit(f"usage: python {sys.argv[0]} --regenerate")
    regenerate()
