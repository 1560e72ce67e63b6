"""``python -m hptransfer.cli``: the same as the ``hptransfer`` console script."""

from hptransfer.cli import main

main()
