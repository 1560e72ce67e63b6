"""The study: the Optuna record of a tune and everything that writes it.

Bottom to top: :mod:`~hptransfer.study.config` (what every trial shares, and its sources),
:mod:`~hptransfer.study.storage` (URL → Optuna storage), :mod:`~hptransfer.study.names`
(hptransfer study → Optuna studies), :mod:`~hptransfer.study.attributes` (what a study
carries), :mod:`~hptransfer.study.schema` (what a trial records, and how it reads),
:mod:`~hptransfer.study.leases` (who is alive), :mod:`~hptransfer.study.lifecycle` (claim,
hold, finish, take over: every state change of a trial), :mod:`~hptransfer.study.records`
(read models), :mod:`~hptransfer.study.search` (samplers, pruners, warm starts),
:mod:`~hptransfer.study.trial` (a run becomes a trial), :mod:`~hptransfer.study.runner`
(where trials run), :mod:`~hptransfer.study.worker` (the trial loops, local processes) and
:mod:`~hptransfer.study.tune` (every width, through a runner). docs/architecture.md follows
one trial through them.
"""
