"""Every python block in docs/api.md runs, each in a fresh interpreter."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "api.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_api_doc_example_runs(index, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(BLOCKS[index])
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=90, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
