"""The README stays true: its quick-start snippet runs and prints what the README says."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def quick_start_snippet() -> tuple[str, str]:
    """The README's ten-line Python block and the output its last comment promises."""
    text = README.read_text()
    section = text.split("**Ten lines**", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    promised = re.search(r"^# (\{.*?\})", code, re.M).group(1)
    return code, promised


def test_documented_commands_exist():
    text = README.read_text()
    for script in re.findall(r"bash (scripts/\w+\.sh)", text):
        assert (README.parent / script).is_file(), script
    assert "bash scripts/test.sh" in (README.parent / ".ci" / "run").read_text()


@pytest.mark.slow
def test_quick_start_snippet_runs_and_prints_what_it_promises(tmp_path):
    code, promised = quick_start_snippet()
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.strip().splitlines()[-1]
    assert ast.literal_eval(printed) == ast.literal_eval(promised)
