"""Every ``hptransfer …`` command written in the README and docs/ runs (slow job).

Commands are taken from fenced ``bash`` blocks; each runs through the installed console
script in a temporary folder, so files it writes land there.
"""

from __future__ import annotations

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


@pytest.mark.slow
@pytest.mark.parametrize("doc,command", _commands())
def test_documented_command_runs(doc, command, tmp_path):
    script = shutil.which("hptransfer") or str(Path(sys.executable).parent / "hptransfer")
    args = shlex.split(command)
    result = subprocess.run([script, *args[1:]], cwd=tmp_path, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"{doc}: {command}\n{result.stdout}\n{result.stderr}"
