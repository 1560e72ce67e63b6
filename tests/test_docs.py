"""Every ``hptransfer …`` command written in the README and docs/ runs (slow job), and
output a page shows (the reproduction table) is what the command prints today.

Commands are taken from fenced ``bash`` blocks; each runs through the installed console
script in a temporary folder, so files it writes land there.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith("hptransfer "):
                    found.append((doc.name, line))
    return found


def test_docs_have_commands():
    assert len(_commands()) >= 3


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One folder (and HPTRANSFER_HOME) for all documented commands, run in document order,
    so a `status` or `plot` finds the study an earlier `tune` made. Documented commands
    run from the repository root, so its example models are linked in."""
    folder = tmp_path_factory.mktemp("docs")
    (folder / "integrations").symlink_to(ROOT / "integrations")  # read-only examples
    _write_my_data(folder / "my_data")
    return folder


def _write_my_data(folder: Path) -> None:
    """The users' own data and tokenizer that docs/data.md and the README point at, in every
    format: a BPE tokenizer.json trained here, its ids as uint32 tokens, a Megatron pair, a
    Parquet table of text and one of ids (nothing downloaded)."""
    import numpy as np
    from data_files import documents, sample_text, train_bpe, write_megatron, write_parquet

    from hptransfer.data.tokenizer import JsonTokenizer

    folder.mkdir()
    text = sample_text(400_000)
    tokenizer = JsonTokenizer(train_bpe(folder / "tokenizer.json", text, vocab_size=1024))
    texts = documents(text, 200)
    docs = tokenizer.encode_batch(texts)
    np.concatenate(docs).astype(np.uint32).tofile(folder / "tokens.bin")
    write_megatron(folder / "corpus_text_document", docs)
    write_parquet(folder / "text.parquet", {"text": texts})
    write_parquet(folder / "ids.parquet", {"input_ids": [d.tolist() for d in docs]})


@pytest.mark.slow
@pytest.mark.parametrize("doc,command", _commands())
def test_documented_command_runs(doc, command, workdir):
    script = shutil.which("hptransfer") or str(Path(sys.executable).parent / "hptransfer")
    args = shlex.split(command)
    env = {**os.environ, "HPTRANSFER_HOME": str(workdir / "home")}
    result = subprocess.run([script, *args[1:]], cwd=workdir, capture_output=True, text=True,
                            timeout=900, env=env)
    assert result.returncode == 0, f"{doc}: {command}\n{result.stdout}\n{result.stderr}"


def test_code_links_point_at_what_they_name():
    """A link like [`init_std`](../hptransfer/mup/rules.py#L132) must land on a line
    containing its label, so the row-by-row docs cannot drift from the code."""
    broken = []
    for doc in DOCS:
        for label, target, line in re.findall(
                r"\[`([^`]+)`\]\(\.\./([^)#]+)#L(\d+)\)", doc.read_text()):
            lines = (ROOT / target).read_text().splitlines()
            number = int(line)
            if number > len(lines) or label not in lines[number - 1]:
                broken.append(f"{doc.name}: `{label}` is not on {target}:{line}")
    assert not broken, "\n".join(broken)


TABLE_BEGIN = "<!-- begin: hptransfer study table --markdown -->\n"
TABLE_END = "<!-- end: hptransfer study table --markdown -->"


def test_reproduction_page_shows_the_recorded_table(tmp_path):
    # the Results of docs/reproduction.md are the table rebuilt from the committed JSON
    # (studies/results), so a re-run study or a changed fit cannot leave the page stale
    from click.testing import CliRunner

    from hptransfer.cli import main

    page = (ROOT / "docs" / "reproduction.md").read_text()
    assert TABLE_BEGIN in page and TABLE_END in page
    shown = page.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip()
    result = CliRunner().invoke(main, ["study", "table", "--markdown", "--studies",
                                       str(ROOT / "studies"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = result.stdout.strip()
    assert shown == table, ("docs/reproduction.md is stale: paste the output of "
                            "`hptransfer study table --markdown` between its markers")
