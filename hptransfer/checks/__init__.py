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
