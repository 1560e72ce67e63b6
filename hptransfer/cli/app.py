"""The ``hptransfer`` command group; commands register themselves from their modules."""

from __future__ import annotations

import click

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "max_content_width": 100})
@click.version_option(package_name="hptransfer")
def main() -> None:
    """Tune hyperparameters on small µP proxies; transfer them to the model you train."""
