"""Checks that train a few steps and judge the parametrization: the coord check.

The coord check's defaults live here, without torch, so that the command line shows the
ones :func:`hptransfer.checks.coord_check.coord_check` uses.
"""

WIDTHS = (32, 64, 128, 256)
STEPS = 4  # t = 1 is the initial model
DEPTH = 2
SEQ_LEN = 64
BATCH_SIZE = 8
TOLERANCE = 1.25  # growth per doubling of width allowed (microsoft/mup's test used 1.2)
SEEDS = 3  # inits and batches averaged over (microsoft/mup's nseeds): one seed's logits at a
# few steps are noisy enough to fail a correct model now and then
SIGMAS = 2.0  # a slope fails only when it is outside the band by more than 2 standard errors
