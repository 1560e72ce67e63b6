"""A reproduction study: one ablation of Lingle's µ-Transfer paper, as a delta from one setting.

The ``studies/`` folder holds ``setting.toml``, the one CPU-scale setting every study shares
(widths, model, batch, training steps, LR octave grid, seed), and one ``<name>.toml`` per
ablation of docs/spec.md §1 naming only what it changes (docs/reproduction.md lists them
beside the paper's verdicts). Both are typed data validated here: a misspelt key or a bad
value is an error naming the file and the key.

A study sweeps one :class:`Axis` (width, as the paper did; or depth; or training steps)
against the LR octave grid. Each value of the axis is a :class:`Point`, tuned in an
hptransfer study of its own name: the width axis is one study whose width studies are the
points (so ``hptransfer plot`` and ``predict`` read it as they read any tune); depth and
steps get one study per value, since a study's spec and budget are fixed.

>>> setting = Setting(widths=(32, 64), lr_exponents=(-9, -7), steps=150,
...                   spec={"depth": 4, "seq_len": 128}, hparams={"batch_size": 16})
>>> study = Ablation(title="4× batch", paper="yes", hparams={"batch_size": 64},
...                  lr_shift=1).resolve("batch-x4", setting)
>>> study.lr_exponents, [p.study for p in study.points]
((-8, -7, -6), ['batch-x4', 'batch-x4'])
>>> study.points[0].budget.tokens == 150 * 16 * 128  # a different batch keeps the tokens
True
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, model_validator

from hptransfer.budget import Budget
from hptransfer.data.source import DataSource
from hptransfer.errors import AblationError, explain_fields
from hptransfer.hparams import HParams
from hptransfer.space import SearchSpace
from hptransfer.spec import FrozenConfig, ModelSpec, Parametrization, Preset

if TYPE_CHECKING:
    from hptransfer.data.corpus import Corpus
    from hptransfer.study.config import StudyConfig

__all__ = ["Ablation", "AblationError", "Axis", "PaperVerdict", "Point", "Setting", "Study",
           "default_folder", "definition_files", "load_setting", "load_study"]

SETTING_FILE = "setting.toml"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class Axis(str, Enum):
    """What a study varies against the LR grid."""

    WIDTH = "width"  # the paper's question: does the LR optimum stay put as width grows?
    DEPTH = "depth"  # beyond the paper: the same question across depth
    STEPS = "steps"  # beyond the paper: the optimum against the training horizon


class PaperVerdict(str, Enum):
    """What Lingle (2024) reports for an ablation (docs/spec.md §1)."""

    YES = "yes"  # the LR optimum transferred
    NO = "no"  # it did not
    USED = "used"  # not a yes/no ablation: used in one of the paper's final recipes
    ABSENT = "absent"  # not in the paper (hptransfer's depth and horizon studies)


class Setting(FrozenConfig):
    """The shared CPU-scale setting (``studies/setting.toml``); every study is a delta."""

    widths: tuple[int, ...] = Field(min_length=2, description="widths of a width study")
    lr_exponents: tuple[int, int] = Field(
        description="lowest and highest log2 α of the grid, one octave apart, inclusive")
    steps: int = Field(gt=0, description="training steps at the setting's batch size; a "
                                         "study with another batch trains on as many tokens")
    eval_tokens: int = Field(65536, gt=0, description="validation tokens at the end of a run")
    seed: int = 0
    data: str | None = Field(None, description="corpus path (relative to the setting file); "
                                               "None: the built-in corpus")
    tokenizer: str | None = Field(None, description="a local tokenizer.json for a text "
                                                    "corpus (relative to the setting file)")
    preset: Preset | None = Field(None, description="named ModelSpec constants under [spec] "
                                                    "(lingle: the paper's µP constants)")
    spec: dict[str, Any] = Field(default_factory=dict, description="ModelSpec fields")
    hparams: dict[str, Any] = Field(default_factory=dict, description="HParams fields")

    @model_validator(mode="after")
    def _check(self) -> Setting:
        if self.tokenizer is not None and self.data is None:
            raise ValueError("tokenizer applies to a text corpus given as data; the built-in "
                             "corpus is byte-level (benchmarks/bpe_corpus.py writes it as "
                             "text)")
        low, high = self.lr_exponents
        if low >= high:
            raise ValueError(f"lr_exponents must be [low, high] with low < high, got "
                             f"{list(self.lr_exponents)}")
        for key, owner in (("width", self.spec), ("lr", self.hparams)):
            if key in owner:
                raise ValueError(f"{key} is what a study sweeps; it cannot be fixed in the "
                                 f"setting")
        unknown = sorted(set(self.spec) - set(ModelSpec.model_fields))
        if unknown:
            raise ValueError(f"[spec]: unknown ModelSpec field(s) {unknown}")
        try:
            HParams(**self.hparams)
        except ValidationError as error:
            raise ValueError(f"[hparams]: {explain_fields(error)}") from None
        return self

    @property
    def source(self) -> DataSource | str | None:
        """What the studies load: the data path, with its tokenizer when one is given."""
        if self.tokenizer is None:
            return self.data
        return DataSource(path=self.data, tokenizer=self.tokenizer)

    @property
    def base_hparams(self) -> HParams:
        return HParams(**self.hparams)

    def tokens(self, steps: int | None = None) -> int:
        """Training tokens of ``steps`` (default: the setting's) at the setting's batch."""
        seq_len = self.spec.get("seq_len", ModelSpec.model_fields["seq_len"].default)
        return (steps or self.steps) * self.base_hparams.batch_size * seq_len


class Point(FrozenConfig):
    """One value of a study's axis: what is trained, and the hptransfer study it lands in."""

    value: int
    study: str
    width: int
    spec: ModelSpec
    hparams: HParams = Field(description="every hparam but the LR, which the grid sweeps")
    lr_exponents: tuple[int, ...] = Field(description="log2 α of the grid, one octave apart")
    budget: Budget
    seed: int
    data: DataSource | str | None

    @property
    def space(self) -> SearchSpace:
        """The LR octaves, nothing else searched."""
        return SearchSpace(lr=(2.0 ** self.lr_exponents[0], 2.0 ** self.lr_exponents[-1]),
                           weight_decay=None, batch_sizes=None, base=self.hparams)

    def config(self, corpus: Corpus) -> StudyConfig:
        """The :class:`StudyConfig` tuned for this point on ``corpus``."""
        from hptransfer.study.config import study_config

        return study_config(spec=self.spec, space=self.space, budget=self.budget,
                            seed=self.seed, corpus=corpus, data=self.data)


class Ablation(FrozenConfig):
    """One ``studies/<name>.toml``: what a study changes from the setting."""

    title: str = Field(min_length=1, description="the ablation, as the paper names it")
    paper: PaperVerdict = Field(description="the paper's verdict (docs/spec.md §1)")
    paper_note: str = Field("", description="what else the paper says about it")
    spec: dict[str, Any] = Field(default_factory=dict, description="ModelSpec changes")
    hparams: dict[str, Any] = Field(default_factory=dict, description="HParams changes")
    lr_shift: int = Field(0, description="octaves the LR grid moves (the paper moved it by "
                                         "√4 = 1 octave for its 4× batch ablations)")
    axis: Axis = Axis.WIDTH
    values: tuple[int, ...] | None = Field(
        None, description="depths or steps of a depth or steps study (width: the setting's "
                          "widths)")
    width: int | None = Field(None, gt=0, description="the fixed width of a depth or steps "
                                                      "study")

    @model_validator(mode="after")
    def _check(self) -> Ablation:
        swept = {Axis.WIDTH: "width", Axis.DEPTH: "depth", Axis.STEPS: None}[self.axis]
        for key, owner in (("width", self.spec), (swept, self.spec), ("lr", self.hparams)):
            if key in owner:
                raise ValueError(f"{key} is what the study sweeps (the axis, or the LR grid); "
                                 f"remove it (a depth or steps study sets its width with "
                                 f"width = …)")
        if self.axis is Axis.WIDTH:
            if self.values is not None or self.width is not None:
                raise ValueError("a width study takes the setting's widths: remove values "
                                 "and width")
        elif self.values is None or len(self.values) < 2 or self.width is None:
            raise ValueError(f"a {self.axis.value} study needs values (two or more "
                             f"{self.axis.value}s) and the width it runs at")
        return self

    def resolve(self, name: str, setting: Setting, *, widths: tuple[int, ...] | None = None,
                source: str | None = None) -> Study:
        """Every point of the study; ``widths`` replaces the setting's for a width study.
        Errors name ``source`` (default: the study's name)."""
        source = source or name
        if not _NAME.match(name):
            raise AblationError(f"study name {name!r}: use lower-case letters, digits, '-' "
                                f"and '_' (it names the file and the Optuna studies)")
        if widths is not None and self.axis is not Axis.WIDTH:
            raise AblationError(f"{source} is a {self.axis.value} study at width {self.width}; "
                                f"--widths applies to width studies only")
        low, high = (e + self.lr_shift for e in setting.lr_exponents)
        values = widths or (setting.widths if self.axis is Axis.WIDTH else self.values)
        try:
            hparams = HParams(**{**setting.hparams, **self.hparams})
        except ValidationError as error:
            raise AblationError(f"{source} [hparams]: {explain_fields(error)}") from None
        grid = tuple(range(low, high + 1))
        try:
            points = tuple(self._point(name, setting, hparams, grid, v) for v in values)
        except ValidationError as error:
            raise AblationError(f"{source} [spec]: {explain_fields(error)}") from None
        return Study(name=name, title=self.title, paper=self.paper,
                     paper_note=self.paper_note, axis=self.axis, lr_exponents=grid,
                     points=points, setting=setting, ablation=self)

    def _point(self, name: str, setting: Setting, hparams: HParams, grid: tuple[int, ...],
               value: int) -> Point:
        width = value if self.axis is Axis.WIDTH else self.width
        spec = {**setting.spec, **self.spec, "width": width}
        if setting.preset is not None and Parametrization(spec.get(
                "param", Parametrization.MUP)) is not Parametrization.SP:
            spec = {**setting.preset.fields, **spec}  # µP's constants; SP keeps its own
        if self.axis is Axis.DEPTH:
            spec["depth"] = value
        steps = value if self.axis is Axis.STEPS else setting.steps
        spec = ModelSpec(**spec)
        tokens = setting.tokens(steps)
        # one evaluation, at the end: the table compares final losses only
        last = Budget(tokens=tokens).resolve_steps(
            tokens_per_step=hparams.batch_size * spec.seq_len)
        budget = Budget(tokens=tokens, eval_every=last, eval_tokens=setting.eval_tokens)
        study = name if self.axis is Axis.WIDTH else f"{name}.{self.axis.value}{value}"
        return Point(value=value, study=study, width=width, spec=spec, hparams=hparams,
                     lr_exponents=grid, budget=budget, seed=setting.seed, data=setting.source)


class Study(FrozenConfig):
    """A definition resolved against the setting: every point, validated."""

    name: str
    title: str
    paper: PaperVerdict
    paper_note: str
    axis: Axis
    lr_exponents: tuple[int, ...]
    points: tuple[Point, ...]
    setting: Setting
    ablation: Ablation

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(p.value for p in self.points)


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise AblationError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as error:
        raise AblationError(f"{path}: not valid TOML: {error}") from None


def load_setting(path: str | Path) -> Setting:
    """The setting in ``path``; relative ``data`` and ``tokenizer`` paths are taken from the
    file's folder."""
    path = Path(path)
    try:
        setting = Setting(**_read_toml(path))
    except ValidationError as error:
        raise AblationError(f"{path}: {explain_fields(error)}") from None
    for key in ("data", "tokenizer"):
        given = getattr(setting, key)
        if given is not None and not Path(given).is_absolute():
            setting = setting.model_copy(update={key: str((path.parent / given).resolve())})
    return setting


def default_folder() -> Path:
    """``./studies`` when it holds a setting, else the source checkout's ``studies/``."""
    here = Path.cwd() / "studies"
    if (here / SETTING_FILE).is_file():
        return here
    return Path(__file__).resolve().parents[2] / "studies"


def definition_files(folder: str | Path) -> list[Path]:
    """Every study definition in ``folder``, by name."""
    return sorted(p for p in Path(folder).glob("*.toml") if p.name != SETTING_FILE)


def load_study(definition: str | Path, *, folder: str | Path | None = None,
               setting: Setting | str | Path | None = None,
               widths: tuple[int, ...] | None = None, model: str | None = None) -> Study:
    """Resolve a definition, given as a path or a name in ``folder`` (default:
    :func:`default_folder`), against ``setting`` (default: the definition's folder's
    ``setting.toml``). ``model`` runs the study on another model family: the study (and its
    recorded result) is then named ``<name>-<model>``, beside the built-in model's."""
    path = Path(definition)
    if path.suffix != ".toml":
        path = Path(folder or default_folder()) / f"{definition}.toml"
        if not path.is_file():
            known = ", ".join(p.stem for p in definition_files(path.parent)) or "none"
            raise AblationError(f"no study definition {definition!r} in {path.parent} "
                                f"(studies there: {known})")
    if path.name == SETTING_FILE:
        raise AblationError(f"{path} is the shared setting, not a study; name a study")
    if not isinstance(setting, Setting):
        setting = load_setting(setting or path.parent / SETTING_FILE)
    try:
        ablation = Ablation(**_read_toml(path))
    except ValidationError as error:
        raise AblationError(f"{path}: {explain_fields(error)}") from None
    name = path.stem
    if model is not None:
        setting = setting.model_copy(update={"spec": {**setting.spec, "model": model}})
        slug = re.sub(r"[^a-z0-9]+", "-", Path(model.rpartition(":")[0] or model).stem.lower()
                      if ":" in model else model.lower()).strip("-")
        name = f"{name}-{slug}"
    return ablation.resolve(name, setting, widths=widths, source=str(path))
