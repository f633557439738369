"""Every python block in the user docs runs, each in a fresh interpreter."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
PAGES = ["api.md", "util.md", "scheduling.md", "memory.md", "observability.md"]
BLOCKS = [(page, i, block) for page in PAGES
          for i, block in enumerate(re.findall(r"```python\n(.*?)```",
                                               (DOCS / page).read_text(), flags=re.S))]


@pytest.mark.parametrize("page, index, block", BLOCKS,
                         ids=[f"{page}-{i}" for page, i, _ in BLOCKS])
def test_doc_example_runs(page, index, block, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(block)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=90, cwd=tmp_path)
    assert proc.returncode == 0, f"{page} block {index}:\n{proc.stderr[-3000:]}"
