"""The README's figures about the build agree with the module the tests run
(tests/readme_figures.py; `make readme-figures` rewrites them)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import readme_figures as rf  # noqa: E402


def test_the_readme_states_the_module_size_of_the_build(wasm_only_path):
    problems = rf.check(rf.README.read_text(), wasm_only_path.stat().st_size)
    assert problems == [], "\n".join(problems) + "\nrun `make readme-figures`"


def test_the_check_catches_a_wrong_or_a_third_size():
    text = rf.README.read_text()
    sizes, problems = rf.stated(text)
    assert problems == [] and len(sizes) == 2
    size = sizes[0]
    assert rf.check(text, size) == []
    assert rf.check(text, int(size * 1.05))  # the build grew by 5%
    assert rf.check(text + "\nThe `.wasm` is 270,261 bytes (264 KiB).\n", size)
    rewritten = rf.rewrite(text, 300_000)
    assert rf.stated(rewritten)[0] == [300_000, 300_000]
    assert "**300,000 bytes** (about 293 KiB)" in rewritten
