"""Confirmation runs at the target width (:mod:`~hptransfer.confirmation.runs`) and the verdict
on a prediction (:mod:`~hptransfer.confirmation.verdict`, pure)."""
