"""The tiny model that config-file tests write into their TOML: one layer, width 32, four
sequences of 32 tokens a step (a trial of a few steps takes well under a second); and a
whole study file around it that searches the LR alone."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from hptransfer.cli import main

TINY_MODEL_TOML = """\
[spec]
depth = 1
head_dim = 16
seq_len = 32
base_width = 32

[hparams]
batch_size = 4
"""


def lr_only_toml(path: Path, steps: int, eval_every: int | None = None) -> Path:
    """Write a study config for the tiny model that searches the LR only (λ and the batch
    size held), trained ``steps`` steps, to ``path``; return the path."""
    path.write_text(f"""\
{TINY_MODEL_TOML}
[space]
lr = [{2.0**-10}, {2.0**-2}]
weight_decay = "off"
batch_sizes = "off"

[budget]
steps = {steps}
eval_every = {eval_every or max(1, steps // 8)}
eval_tokens = 1024
""")
    return path


# the same tiny model as command-line flags
TINY_FLAGS = ["--depth", "1", "--seq-len", "32", "--base-width", "32", "--head-dim", "16"]


def run_cli(args: list[str], code: int = 2) -> Result:
    """``hptransfer ARGS`` in this process; asserts its exit code (2: refused) and that it
    printed no traceback."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result
