"""Names: how one hptransfer study maps onto Optuna studies, and the storage a caller gives.

One hptransfer study ``NAME`` is one Optuna study per proxy width, ``NAME.w{width}``, so
every sampler models one width's loss surface and optuna-dashboard shows each width on its
own; confirmation runs at a target width are ``NAME.confirm.w{width}``. A study name cannot
end in ``.confirm`` (:data:`CONFIRM_SUFFIX`): the width studies of a study ``X.confirm``
would be the confirmation studies of ``X``, and each would count or fail the other's trials.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from hptransfer.errors import StudyError
from hptransfer.study.storage import Access

if TYPE_CHECKING:
    import optuna

__all__ = ["CONFIRM_SUFFIX", "WIDTH_SUFFIX", "check_name", "confirmation_study_name",
           "open_storage_arg", "width_study_name"]

WIDTH_SUFFIX = re.compile(r"(?P<name>.+)\.w(?P<width>\d+)")  # matched whole (fullmatch)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CONFIRM_SUFFIX = ".confirm"  # reserved: NAME.confirm.wW are NAME's confirmation studies


def check_name(name: str) -> str:
    """A study name: letters, digits, ``-``, ``_`` and ``.``, starting with a letter or a
    digit (it names Optuna studies and the files of plots and reports). Matched whole: a
    trailing newline is not a name."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise StudyError(f"study name {name!r}: use letters, digits, '-', '_' and '.', "
                         f"starting with a letter or digit, at most 128 characters (it names "
                         f"Optuna studies and report files, so no '/' or spaces)")
    if name.endswith(CONFIRM_SUFFIX):
        raise StudyError(f"study name {name!r}: names ending in {CONFIRM_SUFFIX!r} are "
                         f"reserved (the confirmation runs of study "
                         f"{name.removesuffix(CONFIRM_SUFFIX)!r} are recorded as "
                         f"{name}.wWIDTH); choose another name, e.g. "
                         f"{name.removesuffix(CONFIRM_SUFFIX) + '-confirm'!r}")
    return name


def width_study_name(name: str, width: int) -> str:
    return f"{check_name(name)}.w{width}"


def confirmation_study_name(study: str, width: int) -> str:
    return f"{check_name(study)}.confirm.w{width}"


def open_storage_arg(storage: optuna.storages.BaseStorage | str | None,
                     access: Access = Access.READ) -> optuna.storages.BaseStorage:
    """Accept an Optuna storage or a URL (None: the default local SQLite file), which is
    opened for ``access`` (reading, by default: nothing is created or changed). A storage
    object the caller built is made safe for several processes the same way
    (:func:`hptransfer.study.storage.serialize_sqlite`)."""
    from hptransfer.study.storage import open_storage, serialize_sqlite

    if storage is None or isinstance(storage, str):
        return open_storage(storage, access)
    serialize_sqlite(storage)
    return storage
