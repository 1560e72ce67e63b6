"""µP: what each parameter is and the one table of width and depth arithmetic.

- :mod:`~hptransfer.mup.roles`: a parameter's :class:`Role` and :class:`Declaration`;
- :mod:`~hptransfer.mup.rules`: the table (init, per-tensor LR, weight decay, ε, forward
  multipliers) and every question about how it scales with width; no torch;
- :mod:`~hptransfer.mup.tensors`: the table applied to a model (``Declared`` modules,
  init, optimizer param groups).

docs/parametrization.md shows the table row by row.
"""
