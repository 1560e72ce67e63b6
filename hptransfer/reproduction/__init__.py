"""Lingle's µ-Transfer ablations: study definitions, runs, and the paper-style table."""
