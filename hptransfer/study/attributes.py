"""Study attributes: what a width study or a confirmation study carries besides its trials.

A width study carries the :class:`~hptransfer.study.config.StudyConfig` (which also makes
it an hptransfer study: :func:`study_names` lists the studies that carry one), whether its
warm start was enqueued, why its ladder search is done, the process planning its ladder
rounds, and how its last local tune placed its trials; a confirmation study carries its
plan. The marks of trials another worker took over are the lifecycle's
(:mod:`hptransfer.study.lifecycle`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hptransfer.errors import StudyError
from hptransfer.study.config import StudyConfig, refuse_different
from hptransfer.study.names import WIDTH_SUFFIX, open_storage_arg, width_study_name

if TYPE_CHECKING:
    import optuna

__all__ = ["bind_config", "check_existing", "check_one_base", "confirmation_widths",
           "existing_config",
           "is_warm_started",
           "ladder_done", "load_config", "mark_ladder_done", "mark_warm_started", "read_plan",
           "read_planner", "study_names", "widths_of", "write_placement", "write_plan",
           "write_planner"]

CONFIG_ATTR = "hptransfer_config"  # study attribute of a width study: its StudyConfig
PLAN_ATTR = "hptransfer_confirmation"  # study attribute of a confirmation study: its plan
WARM_ATTR = "warm_started"  # study attribute: the warm-start trials were enqueued
LADDER_DONE_ATTR = "ladder_done"  # study attribute: why the ladder needs no more trials
PLANNER_ATTR = "ladder_planner"  # study attribute: the process planning the ladder's rounds
PLACEMENT_ATTR = "placement"  # study attribute: workers × threads of its last local tune


def study_names(storage: optuna.storages.BaseStorage | str | None = None
                ) -> dict[str, list[int]]:
    """hptransfer study name → widths, for every study in ``storage``.

    A confirmation study also matches ``NAME.w{width}`` (as ``NAME = {study}.confirm``) but
    carries no study config: it is never listed here.
    """
    storage = open_storage_arg(storage)
    found: dict[str, list[int]] = {}
    for summary in storage.get_all_studies():
        match = WIDTH_SUFFIX.fullmatch(summary.study_name)
        if match and CONFIG_ATTR in summary.user_attrs:
            found.setdefault(match["name"], []).append(int(match["width"]))
    return {name: sorted(widths) for name, widths in sorted(found.items())}


def widths_of(name: str, storage: optuna.storages.BaseStorage | str | None = None
              ) -> list[int]:
    storage = open_storage_arg(storage)
    widths = study_names(storage).get(name)
    if not widths:
        known = ", ".join(study_names(storage)) or "none"
        raise StudyError(f"no study named {name!r} in this storage (studies here: {known}); "
                         f"create it with: hptransfer tune --study {name}")
    return widths


def confirmation_widths(study: str, storage: optuna.storages.BaseStorage | str | None = None
                        ) -> list[int]:
    """Target widths with confirmation runs of ``study`` in ``storage``."""
    prefix = f"{study}.confirm.w"
    return sorted(int(s.study_name[len(prefix):])
                  for s in open_storage_arg(storage).get_all_studies()
                  if s.study_name.startswith(prefix) and s.study_name[len(prefix):].isdigit()
                  and PLAN_ATTR in s.user_attrs)


def load_config(name: str, storage: optuna.storages.BaseStorage | str | None = None
                ) -> StudyConfig:
    import optuna

    storage = open_storage_arg(storage)
    width = widths_of(name, storage)[0]
    study = optuna.load_study(study_name=width_study_name(name, width), storage=storage)
    return StudyConfig.model_validate_json(study.user_attrs[CONFIG_ATTR])


def check_one_base(name: str, storage: optuna.storages.BaseStorage | str | None = None
                   ) -> None:
    """Refuse a study whose widths were tuned under different µP base widths: their LR
    optima are in different units (α at one M₀ is not α at another), so no fit across them
    means anything."""
    storage = open_storage_arg(storage)
    bases: dict[int, list[int]] = {}
    for width in widths_of(name, storage):
        attrs = storage.get_study_user_attrs(
            storage.get_study_id_from_name(width_study_name(name, width)))
        config = StudyConfig.model_validate_json(attrs[CONFIG_ATTR])
        bases.setdefault(config.spec.base_width, []).append(width)
    if len(bases) > 1:
        found = "; ".join(f"base {base}: widths {', '.join(map(str, ws))}"
                          for base, ws in sorted(bases.items()))
        raise StudyError(f"study {name!r} holds widths tuned under different µP base widths "
                         f"({found}): their optima do not compare. Tune the widths again "
                         f"into one study with one --base-width")


def existing_config(name: str, storage: str | None) -> StudyConfig | None:
    """Study ``name``'s config if the storage at URL ``storage`` holds it, else None;
    nothing is created (a tune asks before it makes the study)."""
    from hptransfer.study.storage import missing_local_file

    if missing_local_file(storage) is not None:
        return None
    opened = open_storage_arg(storage)
    return load_config(name, opened) if name in study_names(opened) else None


def check_existing(name: str, config: StudyConfig, storage) -> None:
    """Refuse, before any trial runs, a config that differs from the study's stored one."""
    if name in study_names(storage):
        refuse_different(name, load_config(name, storage), config)


def bind_config(study: optuna.Study, name: str, config: StudyConfig) -> None:
    """Store ``config`` on a new width study; refuse a different one on an existing study."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        study.set_user_attr(CONFIG_ATTR, config.model_dump_json())
    else:
        refuse_different(name, StudyConfig.model_validate_json(stored), config)


def is_warm_started(study: optuna.Study) -> bool:
    return bool(study.user_attrs.get(WARM_ATTR))


def mark_warm_started(study: optuna.Study) -> None:
    study.set_user_attr(WARM_ATTR, True)


def ladder_done(study: optuna.Study) -> str | None:
    """Why the ladder search of this width study needs no more trials, or None."""
    return study.user_attrs.get(LADDER_DONE_ATTR)


def mark_ladder_done(study: optuna.Study, reason: str | None) -> None:
    """Say why the width is done (its followers stop), or None: its planner starts again
    (a re-run may allow more trials than the run that marked it done)."""
    study.set_user_attr(LADDER_DONE_ATTR, reason)


def write_planner(study: optuna.Study, planner: dict[str, Any]) -> None:
    """The process planning this width's ladder rounds (:class:`~hptransfer.study.leases.
    PlannerLease`: who it is, and when it last said so)."""
    study.set_user_attr(PLANNER_ATTR, planner)


def read_planner(study: optuna.Study) -> dict[str, Any] | None:
    return study.user_attrs.get(PLANNER_ATTR)


def write_placement(study: optuna.Study, placement: dict[str, Any]) -> None:
    """How the last local tune of this width placed its trials (workers, threads, auto);
    each trial's own threads are in its provenance."""
    study.set_user_attr(PLACEMENT_ATTR, placement)


def write_plan(study: optuna.Study, plan: str) -> None:
    """Store what a confirmation study confirms (JSON: the prediction, offsets, tolerance)."""
    study.set_user_attr(PLAN_ATTR, plan)


def read_plan(study: optuna.Study) -> str | None:
    """The stored plan's JSON (see :func:`write_plan`), None if there is none."""
    return study.user_attrs.get(PLAN_ATTR)
