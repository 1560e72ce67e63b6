"""What every trial of a study shares (:class:`StudyConfig`), and where it comes from.

A study config is merged from three sources, later ones winning (:func:`from_sources`): the
built-in CPU proxy setting (``PROXY_*`` below; docs/tuning.md), a config file's sections
(:class:`ConfigFile`: ``[spec]``, ``[hparams]``, ``[space]``, ``[budget]``, and ``[tune]``
for the command's own options), and explicit overrides such as command-line flags.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError

from hptransfer.budget import Budget
from hptransfer.data.source import CorpusRecord, DataSource
from hptransfer.errors import ConfigError, StudyError, explain_fields
from hptransfer.hparams import HParams
from hptransfer.space import SearchSpace
from hptransfer.spec import FrozenConfig, ModelSpec

if TYPE_CHECKING:
    from hptransfer.data.corpus import Corpus

__all__ = ["BASE_WIDTH_HELP", "DEFAULT_TRIALS", "LADDER_TRIALS", "MULTIPLIER_RANGE", "OFF",
           "PROXY_BUDGET",
           "PROXY_HPARAMS", "PROXY_SPACE", "PROXY_SPEC", "ConfigFile", "StudyConfig",
           "StudyTemplate", "base_width", "check_roles", "from_sources", "refuse_different",
           "roles_digest", "study_config"]

# The built-in CPU proxy setting (docs/tuning.md): 8 trials of width 128 take about 7 minutes
# on 2 cores; the LR range spans the bowl of every width from 32 to 256. Its base width M₀
# (where µP is SP) is the narrowest proxy width: base_width() below.
PROXY_SPEC = {"depth": 4, "head_dim": 16, "seq_len": 128}
BASE_WIDTH_HELP = "the narrowest of --widths (or the study's, when it exists)"
PROXY_HPARAMS = {"batch_size": 16}
PROXY_BUDGET = {"steps": 150, "eval_every": 50}
PROXY_SPACE = {"lr": (2.0**-12, 2.0**-2), "weight_decay": (1e-5, 1e-1),
               "batch_sizes": (8, 16, 32)}
DEFAULT_TRIALS = 8  # finished trials per width with an Optuna sampler
LADDER_TRIALS = 24  # the ladder's cap per width; it usually stops before (study/ladder.py)
OFF = "off"  # a [space] range (or flag) set to this is not searched (TOML has no null)
# --multiplier-range's suggested range: 4 octaves each side of 1 holds the step's points
# (2^±2, then 2^±1 beside a moved best) with room for a second move
MULTIPLIER_RANGE = (1 / 16, 16.0)


class StudyConfig(FrozenConfig):
    """What every trial of a study shares. Widths may grow; the rest must not change."""

    spec: ModelSpec = Field(description="spec template; each width study overrides width")
    budget: Budget
    space: SearchSpace
    seed: int = 0
    corpus_hash: str
    data: DataSource | None = Field(None, description="--data and how to read it (--tokenizer, "
                                                      "--token-dtype, --data-column); None "
                                                      "for the built-in corpus")
    corpus: CorpusRecord | None = Field(
        None, description="the corpus's tokenizer and bytes per token (None in studies made "
                          "before they were recorded)")
    roles_digest: str | None = Field(
        None, description="digest of the model's role table at the base width (None in "
                          "studies made before role tables were recorded)")

    def tokens_per_trial(self) -> int:
        """Training tokens of one trial at the base batch size (the proxies' horizon)."""
        tokens_per_step = self.space.base.batch_size * self.spec.seq_len
        return self.budget.resolve_steps(tokens_per_step=tokens_per_step) * tokens_per_step

    def spec_at(self, width: int) -> ModelSpec:
        return ModelSpec(**{**self.spec.model_dump(), "width": width})


def roles_digest(spec: ModelSpec) -> str:
    """The digest of ``spec``'s role table at the base width (builds on the meta device)."""
    from hptransfer.models.registry import role_table

    return role_table(ModelSpec(**{**spec.model_dump(), "width": spec.base_width})).digest()


def check_roles(name: str, config: StudyConfig) -> None:
    """Refuse to work on study ``name`` when this machine's model has another role table
    than the one the study was tuned with (its code, or a role, changed)."""
    if config.roles_digest is not None and roles_digest(config.spec) != config.roles_digest:
        raise StudyError(
            f"study {name!r} was tuned on a model whose role table differs from this "
            f"machine's {config.spec.model} model (its parameters or their µP roles changed): "
            f"use the model code the study was tuned with, or start a new study with --study "
            f"OTHER_NAME")


def refuse_different(name: str, old: StudyConfig, new: StudyConfig) -> None:
    """Refuse to resume study ``name`` (made with ``old``) with a different config."""
    diff = [k for k in StudyConfig.model_fields if getattr(old, k) != getattr(new, k)
            and not (k in ("roles_digest", "corpus") and getattr(old, k) is None)]
    if diff:
        what = ", ".join("role table (the model's parameters or their µP roles)"
                         if k == "roles_digest" else k for k in diff)
        raise StudyError(
            f"study {name!r} already exists with a different {what}; resume it with the same "
            f"settings, or start a new one with --study OTHER_NAME")


def base_width(widths: Sequence[int], stored: StudyConfig | None = None) -> int:
    """The base width M₀ a tune of ``widths`` takes when none is given: the study's own if
    it exists (``stored``: a study's widths share one base), else the narrowest proxy width,
    so that the cheapest proxy is exactly an SP model and every wider model is µP from
    there."""
    return stored.spec.base_width if stored is not None else min(widths)


def study_config(*, spec: ModelSpec | None = None, space: SearchSpace | None = None,
                 budget: Budget | None = None, seed: int = 0, corpus: Corpus | None = None,
                 data: DataSource | str | None = None, widths: Sequence[int] | None = None
                 ) -> StudyConfig:
    """A :class:`StudyConfig`, with the built-in proxy setting for whatever is not given.

    The base width is ``spec``'s when it sets one, else (with ``widths``) the narrowest of
    ``widths`` (:func:`base_width`), else ModelSpec's default. When the batch size is
    searched and the budget is in steps, the budget becomes the same number of *tokens* at
    the base batch size: batch sizes are compared at equal data.
    """
    from hptransfer.data.corpus import load_corpus

    corpus = corpus if corpus is not None else load_corpus(data)
    spec = spec or ModelSpec(**PROXY_SPEC)
    base = spec.base_width
    if "base_width" not in spec.model_fields_set and widths:
        base = base_width(widths)
    # The template's width means nothing (each width study sets its own); store it at the
    # base width so that the same study run with other --widths has the same config.
    spec = ModelSpec(**{**spec.model_dump(), "width": base, "base_width": base,
                        "vocab": max(spec.vocab, corpus.vocab_size)})
    space = space or SearchSpace(**PROXY_SPACE, base=HParams(**PROXY_HPARAMS))
    budget = budget or Budget(**PROXY_BUDGET)
    if space.batch_sizes is not None and budget.steps is not None:
        budget = Budget(**{**budget.model_dump(), "steps": None,
                           "tokens": budget.steps * space.base.batch_size * spec.seq_len})
    return StudyConfig(spec=spec, budget=budget, space=space, seed=seed,
                       corpus_hash=corpus.content_hash, data=data, corpus=corpus.record(),
                       roles_digest=roles_digest(spec))


# ---- config files ----------------------------------------------------------------------------

_SECTION_FIELDS = {"spec": tuple(ModelSpec.model_fields),
                   "hparams": tuple(HParams.model_fields),
                   "space": ("lr", "weight_decay", "batch_sizes", "multipliers"),
                   "budget": tuple(Budget.model_fields)}


class ConfigFile(FrozenConfig):
    """A ``--config`` file (TOML or YAML): the command's ``[tune]`` options and the
    sections of the study config. Each section is validated by its own model when used."""

    tune: dict[str, Any] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)
    hparams: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Any] = Field(default_factory=dict)
    budget: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> ConfigFile:
        """Parse ``path``; a :class:`ConfigError` says what is wrong with it and where."""
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"--config: {path} is not a file")
        if file.suffix not in (".toml", ".yaml", ".yml"):
            raise ConfigError(f"--config: {path} must end in .toml, .yaml or .yml")
        try:
            text = file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(f"--config: {path} is not UTF-8 text (byte {error.start}): save "
                              f"it as UTF-8") from None
        try:
            if file.suffix == ".toml":
                try:
                    import tomllib
                except ModuleNotFoundError:  # Python 3.10
                    import tomli as tomllib
                data = tomllib.loads(text)
            else:
                try:
                    import yaml
                except ModuleNotFoundError:
                    raise ConfigError("--config: YAML files need PyYAML: pip install pyyaml "
                                      "(or use TOML)") from None
                data = yaml.safe_load(text) or {}
        except ConfigError:
            raise
        except Exception as error:  # a parse error: say where
            raise ConfigError(f"--config: cannot parse {path}: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--config: {path} holds a {type(data).__name__}, not a mapping "
                              f"of sections (tune, spec, hparams, space, budget)")
        try:
            parsed = cls(**data)
        except ValidationError as error:
            raise ConfigError(f"--config {path}: {explain_fields(error)} (sections: tune, "
                              f"spec, hparams, space, budget)") from None
        # a model keeps only its own fields, so a misspelt key would be silently ignored
        for section, fields in _SECTION_FIELDS.items():
            unknown = sorted(set(getattr(parsed, section)) - set(fields))
            if unknown:
                raise ConfigError(f"--config {path} [{section}]: unknown key(s) {unknown}"
                                  f"{_belongs(unknown, section)} (known: {', '.join(fields)})")
        return parsed

    def check_tune(self, path: str | Path, fields: tuple[str, ...]) -> None:
        """Refuse a ``[tune]`` key that is not one of ``fields`` (the tune command's), naming
        the section it belongs in: pydantic would call it an extra input of the flag with
        the same name (``--steps``), which is a real flag."""
        unknown = sorted(set(self.tune) - set(fields))
        if unknown:
            raise ConfigError(f"--config {path} [tune]: unknown key(s) {unknown}"
                              f"{_belongs(unknown, 'tune')} (known: {', '.join(fields)})")


def _belongs(keys: list[str], section: str) -> str:
    """Where keys found in ``section`` belong, when another section has them."""
    found = [f"{key} in [{other}]" for key in keys for other, fields in _SECTION_FIELDS.items()
             if other != section and key in fields]
    return f": it belongs in another section ({', '.join(found)})" if found else ""


def _given(values: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (values or {}).items() if v is not None}


class StudyTemplate(FrozenConfig):
    """A study config before its corpus is read: what :func:`from_sources` validates."""

    spec: ModelSpec
    space: SearchSpace
    budget: Budget

    def config(self, corpus: Corpus, *, seed: int = 0, data: DataSource | str | None = None
               ) -> StudyConfig:
        return study_config(spec=self.spec, space=self.space, budget=self.budget, seed=seed,
                            corpus=corpus, data=data)


def from_sources(file: ConfigFile | None = None, *, widths: tuple[int, ...],
                 spec: dict[str, Any] | None = None, space: dict[str, Any] | None = None,
                 steps: int | None = None, stored: StudyConfig | None = None
                 ) -> StudyTemplate:
    """A tune's study template: the built-in proxy setting, overridden by ``file``'s
    sections, overridden by ``spec`` / ``space`` field values and ``steps`` (None values are
    not given; a ``space`` range of :data:`OFF` is not searched). The base width, when
    neither sets it, is :func:`base_width`'s (``stored``: the study's config, if it exists).

    Every width of ``widths`` must build, so a bad width is refused before anything runs.
    Raises pydantic's ``ValidationError`` naming the field (the command line turns it into
    the option's name).
    """
    file = file or ConfigFile()
    template = ModelSpec(**{**PROXY_SPEC, "base_width": base_width(widths, stored),
                            **file.spec, "width": widths[0], **_given(spec)})
    for width in widths:
        ModelSpec(**{**template.model_dump(), "width": width})
    base = HParams(**{**PROXY_HPARAMS, **file.hparams})
    ranges = {**PROXY_SPACE, **file.space, **_given(space)}
    sizes = ranges.get("batch_sizes")
    if sizes not in (None, OFF) and "batch_size" not in file.hparams \
            and base.batch_size not in sizes and all(int(b) > 0 for b in sizes):
        # batch sizes given without a base: start from the one nearest the default (in
        # octaves; a tie takes the smaller, cheaper one), whose steps set the token budget
        nearest = min(sizes, key=lambda b: (abs(math.log2(b / base.batch_size)), b))
        base = base.model_copy(update={"batch_size": nearest})
    searched = SearchSpace(**{k: None if v == OFF else v for k, v in ranges.items()},
                           base=base)
    budget = {**PROXY_BUDGET, **file.budget}
    if steps is not None:
        budget = {**budget, "steps": steps, "tokens": None}
    return StudyTemplate(spec=template, space=searched, budget=Budget(**budget))
