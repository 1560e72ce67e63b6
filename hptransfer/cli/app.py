"""The ``hptransfer`` command group; commands register themselves from their modules.

Any :class:`~hptransfer.errors.HPTransferError` a command lets through is printed as one
``error:`` line with exit status 2 and no traceback: the message already says what is wrong
and how to fix it; so is a failure of the storage's database layer mid-command, and a full
disk. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno

import click

from hptransfer.errors import HPTransferError

__all__ = ["main"]


def _storage_failure(error: Exception) -> bool:
    """An error of the storage's database layer (SQLAlchemy, or Optuna's wrapper of it)."""
    return (type(error).__module__.split(".")[0] == "sqlalchemy"
            or type(error).__name__ == "StorageInternalError")


# commands whose Ctrl-C leaves trials to resume: each running trial was handed back, and its
# retry runs first when the same command runs again
_RESUMABLE = {"tune", "worker", "confirm", "quickstart", "study"}
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            command = ctx.invoked_subcommand
            if command in _RESUMABLE:
                click.echo(f"interrupted: what finished is recorded, and each running trial "
                           f"was handed back; run the same hptransfer {command} command again "
                           f"to resume (its retries run first)", err=True)
            else:
                click.echo("interrupted", err=True)
            ctx.exit(INTERRUPTED_EXIT)
        except HPTransferError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(2)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # a full disk where no writer named it (storages and outputs do): still one line
            where = f" writing {error.filename}" if error.filename else ""
            click.echo(f"error: the disk is full{where} ({error.strerror}); free space and "
                       f"run the same command again (what was recorded is in the storage)",
                       err=True)
            ctx.exit(2)
        except Exception as error:
            if not _storage_failure(error):
                raise
            # a server gone or a file damaged mid-command: the record is the database's
            # own, and what completed is there; say so instead of a traceback
            cause = str(getattr(error, "orig", error)).strip().splitlines()[0]
            click.echo(f"error: the study storage failed: {type(error).__name__}: {cause}. "
                       f"Completed trials are in it; check the server or the file and run "
                       f"the same command again", err=True)
            ctx.exit(2)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one ``warning:`` line on stderr, not a source location."""
    click.echo(f"warning: {message}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                           "max_content_width": 100})
@click.version_option(package_name="hptransfer")
def main() -> None:
    """Tune hyperparameters on small µP proxies; transfer them to the model you train."""
    import warnings

    warnings.showwarning = _show_warning
