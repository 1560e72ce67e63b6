"""Where work runs besides this process: a Ray cluster (Ray Tune trials, Ray Train runs)."""
