"""The study: the Optuna record of a tune, its workers, leases, samplers and pruners."""
