"""The contract every model family passes (docs/models.md), on tiny CPU models, in seconds:

- its role table covers every parameter, once, the same on every build, with one readout;
- at its base width µP is SP bit for bit (with µP's attention scale and readout init);
- the coord check passes under µP and fails under SP at widths 32–128;
- its FLOPs per token are within 10% of ``torch.utils.flop_counter``'s count;
- a study refuses to resume when the family's role table changed.

The families: the built-in transformer, Hugging Face Llama (grouped-query) and GPT-2 built
from a config, and a nanoGPT-style module (integrations/nanogpt/model.py) as a factory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hptransfer.budget import Budget
from hptransfer.checks.coord_check import coord_check
from hptransfer.hparams import HParams
from hptransfer.models.family import logits_of
from hptransfer.models.registry import build_model, family_of, role_table
from hptransfer.mup.roles import Role
from hptransfer.spec import AttentionScale, ModelSpec, ReadoutInit
from hptransfer.study.search import SamplerKind
from hptransfer.training.loop import train

NANOGPT = str(Path(__file__).resolve().parent.parent / "integrations" / "nanogpt" /
              "model.py") + ":make_model"
FAMILIES = {
    "builtin": {},
    "hf-llama": {"kv_heads": "grouped", "kv_group": 2},
    "hf-gpt2": {},
    NANOGPT: {},
}
pytest.importorskip("transformers", reason='Hugging Face families: pip install "hptransfer[hf]"')


def spec_of(model: str, **fields) -> ModelSpec:
    values = {"width": 64, "base_width": 32, "depth": 2, "head_dim": 16, "seq_len": 32,
              **FAMILIES[model], **fields}
    return ModelSpec(model=model, **values)


@pytest.fixture(params=list(FAMILIES), ids=lambda m: Path(m.split(":")[0]).stem)
def model(request) -> str:
    return request.param


def test_roles_cover_every_parameter_once_and_are_stable(model):
    spec = spec_of(model)
    table = role_table(spec)
    built = build_model(spec, seed=0)
    names = [name for name, _ in built.named_parameters()]
    assert [row.name for row in table] == names  # every parameter, once, in order
    assert [tuple(p.shape) for _, p in built.named_parameters()] == [r.shape for r in table]
    roles = [row.role for row in table]
    assert roles.count(Role.READOUT) == 1 and Role.EMBEDDING in roles and Role.HIDDEN in roles
    # stable: a fresh family object and a fresh build give the same table
    from hptransfer.models import family as family_module
    from hptransfer.models import registry

    registry._family.cache_clear()
    family_module._table.cache_clear()
    assert role_table(spec).digest() == table.digest()
    # every width-sized matrix scales by M/M₀ = 2 under µP, the embedding does not
    for row in table:
        if row.role in (Role.HIDDEN, Role.READOUT):
            assert row.fan_in == 2 * row.base_fan_in, row.name
    readout = next(row for row in table if row.role is Role.READOUT)
    assert readout.shape[0] == spec.vocab


def test_mup_at_base_width_is_sp_bit_for_bit(model, tiny_corpus):
    """With the default constants, µP at its base width is the family's SP model."""
    mup = spec_of(model, width=32)
    sp = spec_of(model, width=32, param="sp")
    hparams, budget = HParams(batch_size=4, lr=2.0**-6), Budget(steps=4, eval_every=2,
                                                                 eval_tokens=512)
    a = train(mup, hparams, budget, tiny_corpus, seed=1, threads=1)
    b = train(sp, hparams, budget, tiny_corpus, seed=1, threads=1)
    assert [p.loss for p in a.train_curve] == [p.loss for p in b.train_curve]
    assert [p.loss for p in a.val_curve] == [p.loss for p in b.val_curve]
    # not vacuous: Lingle's constants (1/D, readout std 1/M) change the run
    c = train(spec_of(model, width=32, attention_scale=AttentionScale.INV_D,
                      readout_init=ReadoutInit.MUP), hparams, budget, tiny_corpus, seed=1,
              threads=1)
    assert c.final_val_loss != a.final_val_loss


@pytest.mark.parametrize("param, passes", [("mup", True), ("sp", False)])
def test_coord_check_passes_under_mup_and_fails_under_sp(model, tiny_corpus, param, passes):
    report = coord_check(widths=(32, 64, 128), param=param, steps=3, depth=2, seq_len=32,
                         batch_size=4, corpus=tiny_corpus, threads=1, base_width=32,
                         model=model, **FAMILIES[model])
    assert report.passed is passes, [(g.module, g.step, g.per_doubling)
                                     for g in report.failures]
    assert {"embedding", "logits"} <= {point.module for point in report.points}


def test_flops_per_token_match_the_flop_counter(model):
    from torch.utils.flop_counter import FlopCounterMode

    spec = spec_of(model)
    built = build_model(spec, seed=0)
    tokens = torch.zeros(1, spec.seq_len, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        logits_of(built(tokens)).float().sum().backward()
    counted = counter.get_total_flops() / spec.seq_len
    assert family_of(spec).flops_per_token(spec) == pytest.approx(counted, rel=0.10)


def test_parameter_count_is_the_models(model):
    spec = spec_of(model)
    built = build_model(spec, seed=0)
    total = sum(p.numel() for p in built.parameters())
    assert family_of(spec).parameter_count(spec, embedding=True) == total


def test_a_changed_role_table_is_refused_on_resume(model, tiny_corpus, tmp_path):
    """A study records its model's role table: resuming it with another one (the model's
    code changed) is refused before any trial runs."""
    from hptransfer.errors import StudyError
    from hptransfer.space import SearchSpace
    from hptransfer.study.config import study_config
    from hptransfer.study.tune import tune

    config = study_config(spec=spec_of(model, width=32), corpus=tiny_corpus,
                          space=SearchSpace(lr=(2.0**-8, 2.0**-6), base=HParams(batch_size=2)),
                          budget=Budget(steps=1, eval_every=1, eval_tokens=256))
    assert config.roles_digest == role_table(config.spec).digest()
    url = str(tmp_path / "s.log")
    stale = config.model_copy(update={"roles_digest": "sha256:" + "0" * 64})
    tune(stale, study="s", widths=(32,), trials=1, storage=url, corpus=tiny_corpus,
         sampler=SamplerKind.TPE)
    with pytest.raises(StudyError, match="role table"):
        tune(config, study="s", widths=(32,), trials=2, storage=url, corpus=tiny_corpus,
             sampler=SamplerKind.TPE)


@pytest.mark.parametrize("hf", ["hf-llama", "hf-gpt2"])
def test_a_hugging_face_model_goes_from_tune_to_param_groups(hf, tiny_corpus, text_file,
                                                             tmp_path, monkeypatch):
    """tune → predict → confirm → param groups for the full-size model, in one storage."""
    from hptransfer.confirmation.runs import confirm
    from hptransfer.space import SearchSpace
    from hptransfer.study.attributes import confirmation_widths
    from hptransfer.study.config import study_config
    from hptransfer.study.records import load_trials
    from hptransfer.study.tune import tune
    from hptransfer.study.worker import LocalRunner
    from hptransfer.transfer import predict_hparams

    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path / 's.db'}"
    config = study_config(spec=spec_of(hf, width=32, depth=1), corpus=tiny_corpus,
                          space=SearchSpace(lr=(2.0**-8, 2.0**-4), base=HParams(batch_size=4)),
                          budget=Budget(steps=4, eval_every=2, eval_tokens=512),
                          data=text_file)
    tune(config, study="hf", widths=(32, 64), trials=3, storage=url, corpus=tiny_corpus,
         runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
    assert len(load_trials("hf", url)) == 6
    prediction = predict_hparams(128, study="hf", storage=url, model=hf)
    assert prediction.spec.model == hf
    result = confirm(64, study="hf", storage=url, offsets=(-1.0, 0.0, 1.0), threads=1)
    assert len(result.runs) == 3 and confirmation_widths("hf", url) == [64]
    full = prediction.build_model(seed=0)
    lrs = {id(p): g["lr"] for g in prediction.param_groups(full) for p in g["params"]}
    alpha = prediction.hparams.lr
    assert lrs[id(full.get_output_embeddings().weight)] == pytest.approx(alpha / 4)  # m = 4
    assert lrs[id(full.get_input_embeddings().weight)] == pytest.approx(alpha)
