"""The ``hptransfer`` command group; commands register themselves from their modules.

Any :class:`~hptransfer.errors.HPTransferError` a command lets through is printed as one
``error:`` line with exit status 2 and no traceback: the message already says what is wrong
and how to fix it. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import click

from hptransfer.errors import HPTransferError

__all__ = ["main"]


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HPTransferError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                           "max_content_width": 100})
@click.version_option(package_name="hptransfer")
def main() -> None:
    """Tune hyperparameters on small µP proxies; transfer them to the model you train."""
