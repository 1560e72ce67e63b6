"""Your own model, end to end and refused when it breaks the contract (docs/models.md):
a factory file through tune → predict → confirm → param groups for the full-size model,
an entry point, pattern tables, a changed role table, and every bad input exiting 2 with
one message, no traceback, and nothing written."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from hptransfer.cli import main
from hptransfer.errors import ConfigError
from hptransfer.mup.roles import Role
from hptransfer.spec import ModelSpec

NANOGPT = Path(__file__).resolve().parent.parent / "integrations" / "nanogpt" / "model.py"
TINY = ["--depth", "1", "--seq-len", "32", "--base-width", "32", "--head-dim", "16"]


@pytest.fixture(autouse=True)
def fresh_families():
    """Each test sees model files as they are now (families are cached per process)."""
    from hptransfer.models import family, registry

    registry._family.cache_clear()
    family._table.cache_clear()
    yield
    registry._family.cache_clear()
    family._table.cache_clear()


def write_model(folder: Path, body: str, name: str = "mymodel.py") -> str:
    path = folder / name
    path.write_text("import torch\nfrom torch import nn\n\n" + textwrap.dedent(body))
    return str(path)


SMALL_GPT = """
class Small(nn.Module):
    def __init__(self, width, depth, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = x + torch.relu(block(x))
        return self.head(self.norm(x))


def make_model(width, depth=1, vocab=256):
    return Small(width, depth, vocab)
"""


def invoke(args, code=0):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def tune_args(model: str, storage: Path, text_file: str, *extra: str) -> list[str]:
    return ["tune", "--model", model, "--widths", "32,64", "--trials", "3", "--steps", "4",
            "--lr-range", "2^-8,2^-4", "--weight-decay-range", "off", "--batch-sizes", "off",
            *TINY, "--data", text_file, "--storage", str(storage), "--study", "mine",
            "--threads", "1", *extra]


def test_a_factory_file_goes_through_tune_predict_confirm_and_param_groups(
        tmp_path, text_file, monkeypatch):
    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))
    model = f"{NANOGPT}:make_model"
    storage = tmp_path / "s.db"
    invoke(tune_args(model, storage, text_file))
    from hptransfer.study.attributes import load_config
    from hptransfer.study.records import load_trials

    config = load_config("mine", str(storage))
    assert config.spec.model == model and config.roles_digest.startswith("sha256:")
    assert sum(r.status.value == "complete" for r in load_trials("mine", str(storage))) == 6

    result = invoke(["predict", "--study", "mine", "--storage", str(storage),
                     "--target-width", "128", "--json", "--model", model])
    prediction = json.loads(result.output)
    assert prediction["spec"]["model"] == model and prediction["spec"]["width"] == 128
    invoke(["predict", "--study", "mine", "--storage", str(storage), "--target-width", "128",
            "--model", "builtin"], code=2)  # not the family the study was tuned on

    result = invoke(["confirm", "--study", "mine", "--storage", str(storage),
                     "--target-width", "64", "--offsets", "-1,0,1", "--json", "--threads",
                     "1"])
    assert len(json.loads(result.output)["runs"]) == 3

    # the deliverable: µP param groups for the user's full-size model
    from hptransfer.transfer import predict_hparams

    predicted = predict_hparams(128, study="mine", storage=str(storage))
    full = predicted.build_model(seed=0)
    groups = predicted.param_groups(full)
    alpha, m = predicted.hparams.lr, 128 / 32
    by_tensor = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert by_tensor[id(full.lm_head.weight)] == pytest.approx(alpha / m)
    assert by_tensor[id(full.h[0].attn.c_attn.weight)] == pytest.approx(alpha / m)
    assert by_tensor[id(full.wte.weight)] == pytest.approx(alpha)
    with pytest.raises(ConfigError, match="not the role table's|another width"):
        predicted.param_groups(predicted.build_model().h[0])  # not the predicted model


def test_a_changed_role_table_is_refused_on_resume(tmp_path, text_file):
    path = write_model(tmp_path, SMALL_GPT)
    storage = tmp_path / "s.db"
    invoke(tune_args(f"{path}:make_model", storage, text_file, "--widths", "32",
                     "--trials", "1"))
    # the user's code changes: the blocks get a second matrix each
    Path(path).write_text(Path(path).read_text().replace(
        "nn.Linear(width, width) for _", "nn.Sequential(nn.Linear(width, width), "
                                         "nn.Linear(width, width)) for _"))
    from hptransfer.models import family, registry

    registry._family.cache_clear()
    family._table.cache_clear()
    result = invoke(tune_args(f"{path}:make_model", storage, text_file, "--widths", "32",
                              "--trials", "2"), code=2)
    assert "role table" in result.output
    result = invoke(["worker", "--study", "mine", "--storage", str(storage), "--trials", "2",
                     "--quiet"], code=2)
    assert "role table differs" in result.output


def test_an_entry_point_names_a_factory(tmp_path, monkeypatch):
    """A package registers ``[project.entry-points."hptransfer.models"] small = ...``."""
    write_model(tmp_path, SMALL_GPT, "smallmodels.py")
    dist = tmp_path / "smallmodels-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: smallmodels\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hptransfer.models]\nsmall = smallmodels:make_model\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from hptransfer.models.registry import role_table

    table = role_table(ModelSpec(model="small", width=64, base_width=32, depth=2))
    assert [row.role for row in table].count(Role.READOUT) == 1
    assert table["blocks.0.weight"].fan_in == 64 and table["blocks.0.weight"].base_fan_in == 32
    sys.modules.pop("smallmodels", None)


def test_a_pattern_table_beside_the_factory_assigns_the_roles(tmp_path):
    from hptransfer.models.registry import role_table

    path = write_model(tmp_path, SMALL_GPT + textwrap.dedent("""
        ROLES = {"embed.weight": "embedding", "blocks.*.weight": "hidden",
                 "blocks.*.bias": "bias", "norm.*": "gain", "head.weight": "readout:zero"}
        """))
    table = role_table(ModelSpec(model=f"{path}:make_model", width=64, base_width=32,
                                 roles="patterns"))
    assert table["head.weight"].role is Role.READOUT and table["head.weight"].zero_init
    assert table["norm.bias"].role is Role.GAIN  # the table said so: it is the user's call


@pytest.mark.parametrize("body, message", [
    (SMALL_GPT + 'ROLES = {"embed.weight": "embedding", "blocks.*": "hidden",\n'
                 '         "norm.*": "gain"}\n', "no pattern matches head.weight"),
    (SMALL_GPT + 'ROLES = {"*": "hidden", "embed.*": "embedding"}\n', "two patterns match"),
    (SMALL_GPT + 'ROLES = {"*": "wide"}\n', "is not a role"),
])
def test_a_bad_pattern_table_is_refused(tmp_path, body, message):
    from hptransfer.models.registry import role_table

    path = write_model(tmp_path, body)
    with pytest.raises(ConfigError, match=message):
        role_table(ModelSpec(model=f"{path}:make_model", width=64, base_width=32,
                             roles="patterns"))


BAD_MODELS = {
    "factory-raises": ("def make_model(width, depth=1):\n    raise RuntimeError('no GPU')\n",
                       "raised RuntimeError: no GPU"),
    "not-a-module": ("def make_model(width, depth=1):\n    return 'a model'\n",
                     "returned str, not a torch nn.Module"),
    "heads-do-not-divide": (
        "def make_model(width, depth=1, vocab=256):\n"
        "    if width % 48:\n        raise ValueError(f'{width} heads do not divide')\n"
        "    return nn.Linear(width, vocab)\n", "a width it cannot build"),
    "no-width-keyword": ("def make_model(size, depth=1):\n    return nn.Linear(size, 4)\n",
                         "must take the keyword width"),
    "tied": (SMALL_GPT.replace("self.head = nn.Linear(width, vocab, bias=False)",
                               "self.head = nn.Linear(width, vocab, bias=False)\n"
                               "        self.head.weight = self.embed.weight"),
             "tied weights"),
    "unclassifiable": (SMALL_GPT.replace("self.norm = nn.LayerNorm(width)",
                                         "self.norm = nn.LayerNorm(width)\n"
                                         "        self.mix = nn.Parameter(torch.ones(4, 4))"),
                       "cannot infer a µP role from the shapes of mix"),
    # (issue 22) a factory that ignores width, even with a role table: every proxy would be
    # the same model, and describe --width 1024 showed 32×32 shapes with m = 8
    "ignores-width": (SMALL_GPT.replace("Small(width, depth, vocab)", "Small(32, depth, vocab)")
                      + 'ROLES = {"embed.weight": "embedding", "blocks.*.weight": "hidden",\n'
                        '         "blocks.*.bias": "bias", "norm.*": "gain",\n'
                        '         "head.weight": "readout"}\n',
                      "no parameter of the model changes size with width"),
    # (issue 22) an output computed from the embedding: no readout, µP silently incomplete
    "tied-in-forward": (SMALL_GPT.replace("return self.head(self.norm(x))",
                                          "return self.norm(x) @ self.embed.weight.T"),
                        "is the token embedding (tied weights)"),
    "table-without-readout": (
        SMALL_GPT + 'ROLES = {"embed.weight": "embedding", "blocks.*.weight": "hidden",\n'
                    '         "blocks.*.bias": "bias", "norm.*": "gain",\n'
                    '         "head.weight": "hidden"}\n', "no parameter has the readout role"),
    "wrong-vocabulary": (SMALL_GPT.replace("def make_model(width, depth=1, vocab=256):\n"
                                           "    return Small(width, depth, vocab)",
                                           "def make_model(width, depth=1):\n"
                                           "    return Small(width, depth, 100)"),
                         "logits have V = 100"),
}


@pytest.mark.parametrize("case", BAD_MODELS, ids=str)
def test_a_bad_model_exits_2_with_the_cause_and_writes_nothing(case, tmp_path, text_file):
    body, message = BAD_MODELS[case]
    path = write_model(tmp_path, body)
    storage = tmp_path / "s.db"
    result = invoke(tune_args(f"{path}:make_model", storage, text_file), code=2)
    assert message in result.output
    assert not storage.exists()


@pytest.mark.parametrize("model, message", [
    ("nope", "is not a model family"),
    ("missing.py:make_model", "there is no file"),
    ("os.path:no_such_factory", "has no function 'no_such_factory'"),
    ("no_such_package_xyz:make", "importing no_such_package_xyz raised"),
    ("hf-bert", "no Hugging Face model family"),
])
def test_a_model_string_that_does_not_resolve_exits_2(model, message, tmp_path, text_file):
    for command in (["describe", "--model", model, "--width", "64"],
                    tune_args(model, tmp_path / "s.db", text_file)):
        result = invoke(command, code=2)
        assert message in result.output
    assert not (tmp_path / "s.db").exists()


def test_builtin_only_options_are_refused_for_other_families(tmp_path, text_file):
    result = invoke(tune_args("hf-llama", tmp_path / "s.db", text_file, "--activation",
                              "swiglu"), code=2)
    assert "--activation describe hptransfer's built-in model" in result.output
    result = invoke(tune_args("hf-gpt2", tmp_path / "s.db", text_file, "--depth-rule",
                              "completep"), code=2)
    assert "--depth-rule completep" in result.output


def test_a_factory_without_attention_scale_is_trained_and_the_prediction_says_so(
        tmp_path, text_file):
    path = write_model(tmp_path, SMALL_GPT)
    storage = tmp_path / "s.db"
    # 1/√D, the default, is what scaled_dot_product_attention applies anyway: no warning;
    # Lingle's 1/D cannot be applied to a model that takes no attention_scale
    invoke(tune_args(f"{path}:make_model", storage, text_file, "--attention-scale", "1/D"))
    result = invoke(["predict", "--study", "mine", "--storage", str(storage),
                     "--target-width", "128"])
    assert "attention scale 1/D was not applied" in result.output


def test_describe_and_train_take_a_model(tmp_path, text_file):
    result = invoke(["describe", "--model", "hf-llama", "--width", "64", "--base-width", "32",
                     "--depth", "1", "--kv-heads", "grouped", "--json"])
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["model.layers.0.self_attn.k_proj.weight"]["role"] == "hidden"
    assert rows["model.layers.0.self_attn.k_proj.weight"]["shape"] == [32, 64]
    assert rows["lm_head.weight"]["lr_multiplier"] == 0.5
    result = invoke(["train", "--model", "hf-gpt2", "--width", "32", *TINY, "--steps", "3",
                     "--batch-size", "2", "--data", text_file, "--threads", "1", "--json"])
    record = json.loads(result.output)
    assert record["status"] == "complete" and record["spec"]["model"] == "hf-gpt2"


def test_hugging_face_trainer_trains_with_the_mup_optimizer(tmp_path, tiny_corpus):
    """A real ``transformers.Trainer``, a few CPU steps, with ``Prediction.hf_optimizers``:
    each group keeps its own µP LR through the Trainer's schedule."""
    pytest.importorskip("accelerate")
    import numpy as np
    import torch
    from transformers import Trainer, TrainingArguments

    from hptransfer.hparams import HParams
    from hptransfer.transfer.export import hf_optimizers, hf_training_arguments

    spec = ModelSpec(model="hf-llama", width=64, base_width=32, depth=1, head_dim=16,
                     seq_len=32, kv_heads="grouped")
    hparams = HParams(lr=2.0**-6, batch_size=4, warmup_fraction=0.0)
    from hptransfer.models.registry import build_model

    model = build_model(spec, seed=0)
    rng = np.random.default_rng(0)
    rows = [torch.from_numpy(tiny_corpus.train_batch(rng, 1, 32)[0, :-1]) for _ in range(24)]
    dataset = [{"input_ids": r, "labels": r} for r in rows]
    optimizer, scheduler = hf_optimizers(model, spec, hparams, steps=6)
    before = model.lm_head.weight.detach().clone()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True,
                             save_strategy="no", logging_strategy="no",
                             **hf_training_arguments(hparams, 6))
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      optimizers=(optimizer, scheduler))
    result = trainer.train()
    assert result.global_step == 6 and np.isfinite(result.training_loss)
    assert not torch.equal(before, model.lm_head.weight)
    peaks = sorted({group["initial_lr"] for group in optimizer.param_groups})
    assert peaks == pytest.approx([hparams.lr / 2, hparams.lr])  # hidden/readout α/m, rest α


def test_an_attention_whose_scale_cannot_be_set_is_refused():
    """A transformers version whose attention keeps its scale elsewhere: never 1/√D
    silently."""
    pytest.importorskip("transformers")
    from hptransfer.models.registry import family_of

    spec = ModelSpec(model="hf-llama", width=64, base_width=32, depth=2)
    family = family_of(spec)
    model = family.make(spec)
    for module in model.modules():
        if type(module).__name__.endswith("Attention"):
            del module.scaling
    with pytest.raises(ConfigError, match="cannot set the attention scale"):
        family.configure(model, spec)
    configured = family.make(spec)
    family.configure(configured, spec)
    assert {m.scaling for m in configured.modules() if hasattr(m, "scaling")} == {1 / 4}
    lingle = ModelSpec(**{**spec.model_dump(), "attention_scale": "1/D"})
    configured = family.make(lingle)
    family.configure(configured, lingle)
    assert {m.scaling for m in configured.modules() if hasattr(m, "scaling")} == {1 / 16}


GQA = """
import torch.nn.functional as F


class GroupedQuery(nn.Module):
    \"\"\"Attention with one key/value head of 16 whatever the width (multi-query): k and v
    map the width to a fixed 16, like a vocabulary would, and are hidden matrices.\"\"\"

    def __init__(self, width, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, 16, bias=False)
        self.v = nn.Linear(width, 16, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        b, t, m = x.shape
        q = self.q(x).view(b, t, m // 16, 16).transpose(1, 2)
        k = self.k(x).view(b, 1, t, 16).expand(b, m // 16, t, 16)
        v = self.v(x).view(b, 1, t, 16).expand(b, m // 16, t, 16)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, m))
        return self.head(self.norm(x)).float() / 1.0


def make_model(width, depth=1, vocab=256):
    return GroupedQuery(width, vocab)
"""


def test_the_readout_is_the_matrix_that_maps_to_the_logits(tmp_path):
    """(issue 22) k/v projections to a fixed 16 were inferred as readouts (init 1/M, the
    readout's LR) because 16 is a fixed dimension; the readout is traced from the output."""
    from hptransfer.models.registry import role_table

    path = write_model(tmp_path, GQA)
    table = role_table(ModelSpec(model=f"{path}:make_model", width=64, base_width=32))
    roles = {row.name: row.role for row in table}
    assert roles["k.weight"] is Role.HIDDEN and roles["v.weight"] is Role.HIDDEN
    assert [n for n, r in roles.items() if r is Role.READOUT] == ["head.weight"]


def test_describe_refuses_a_factory_that_ignores_width(tmp_path):
    body, message = BAD_MODELS["ignores-width"]
    path = write_model(tmp_path, body)
    result = invoke(["describe", "--model", f"{path}:make_model", "--width", "1024"], code=2)
    assert message in result.output
