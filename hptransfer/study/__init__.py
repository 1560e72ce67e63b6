"""The study: the Optuna record of a tune and everything that writes it.

Bottom to top: :mod:`~hptransfer.study.config` (what every trial shares, and its sources),
:mod:`~hptransfer.study.storage` (URL → Optuna storage), :mod:`~hptransfer.study.ledger`
(the only reader and writer of the record), :mod:`~hptransfer.study.leases`,
:mod:`~hptransfer.study.search` (samplers, pruners, warm starts),
:mod:`~hptransfer.study.worker` (the trial loop, local processes) and
:mod:`~hptransfer.study.tune` (every width, through a runner). docs/architecture.md follows
one trial through them.
"""
