"""Confirmation runs at the target width (:mod:`~hptransfer.confirm.runs`) and the verdict
on a prediction (:mod:`~hptransfer.confirm.verdict`, pure)."""
