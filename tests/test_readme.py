"""The README's code runs as written: its Python blocks, in order, in one session."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes runs/example here
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3
    session: dict = {}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"README.md python block {number}", "exec"), session)
    assert session["classes"].shape == (360, 10)  # the first block's readout on the digits test set
    assert session["filled"].shape == (8, 1, 8, 8)
    accuracy = float((session["classes"].argmax(1) == session["data"].test_labels).float().mean())
    assert accuracy > 0.5  # the documented defaults learn (chance is 0.1)
