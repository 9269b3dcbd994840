#!/usr/bin/env python3
"""The README's figures about the build, kept true: the size of the filter module.

The README states the .wasm size in exactly two places, the introduction (``**N bytes** (about
K KiB)``) and the ``make run`` output of the walkthrough (``built ...: N bytes``). Other
engineers' changes move the size, so the check allows a small drift (TOLERANCE) and
``make readme-figures`` rewrites both from the current build:

    python tests/readme_figures.py --check target/wasm32-wasip1/release/outgoing_auth.wasm
    python tests/readme_figures.py --write target/wasm32-wasip1/release/outgoing_auth.wasm

tests/e2e/test_readme_figures.py runs the check against the module the tests use.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
TOLERANCE = 0.02  # of the built size: about 5 KiB on a 264 KiB module

# (pattern, how it writes a size); group "bytes" is the figure, "kib" its KiB when stated.
INTRO = re.compile(
    r"(?P<pre>`target/wasm32-wasip1/release/outgoing_auth\.wasm` \(`make build`\), \*\*)"
    r"(?P<bytes>[\d,]+)(?P<mid> bytes\*\* \(about )(?P<kib>\d+)(?P<post> KiB)"
)
MAKE_RUN = re.compile(r"(?P<pre>built target/wasm32-wasip1/release/outgoing_auth\.wasm: )(?P<bytes>\d+)(?P<post> bytes)")
# any other statement of a module-sized figure would be a third place to keep true
ANY_SIZE = re.compile(r"\b\d{3},?\d{3} bytes\b|\b2\d\d KiB\b")


def kib(size: int) -> int:
    return round(size / 1024)


def stated(text: str) -> tuple[list[int], list[str]]:
    """The sizes the README states, and the problems with how it states them."""
    problems = []
    sizes = []
    intro = INTRO.findall(text)
    runs = MAKE_RUN.findall(text)
    if len(intro) != 1:
        problems.append(f"the introduction's '**N bytes** (about K KiB)' is there {len(intro)} times, not once")
    if len(runs) != 1:
        problems.append(f"the make run output's 'built ...: N bytes' is there {len(runs)} times, not once")
    for m in INTRO.finditer(text):
        size = int(m["bytes"].replace(",", ""))
        sizes.append(size)
        if int(m["kib"]) != kib(size):
            problems.append(f"{m['bytes']} bytes is about {kib(size)} KiB, not {m['kib']}")
    for m in MAKE_RUN.finditer(text):
        sizes.append(int(m["bytes"]))
    stripped = MAKE_RUN.sub("", INTRO.sub("", text))
    for m in ANY_SIZE.finditer(stripped):
        problems.append(f"another module size in the README: {m.group(0)!r}; state it only in the two places")
    if len(set(sizes)) > 1:
        problems.append(f"the README states different sizes: {sorted(set(sizes))}")
    return sizes, problems


def check(text: str, built: int) -> list[str]:
    sizes, problems = stated(text)
    for size in set(sizes):
        if abs(size - built) > TOLERANCE * built:
            problems.append(
                f"the README says {size} bytes, the build is {built} bytes (more than {TOLERANCE:.0%} off)"
            )
    return problems


def rewrite(text: str, built: int) -> str:
    text = INTRO.sub(lambda m: f"{m['pre']}{built:,}{m['mid']}{kib(built)}{m['post']}", text)
    return MAKE_RUN.sub(lambda m: f"{m['pre']}{built}{m['post']}", text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="fail when a figure is off")
    mode.add_argument("--write", action="store_true", help="rewrite the figures from the build")
    parser.add_argument("wasm", type=Path, help="the built module")
    args = parser.parse_args()
    built = args.wasm.stat().st_size
    text = README.read_text()
    if args.write:
        new = rewrite(text, built)
        README.write_text(new)
        print(f"README.md: the module is {built:,} bytes (about {kib(built)} KiB)" + ("" if new != text else "; unchanged"))
        text = new
    problems = check(text, built)
    for p in problems:
        print(f"README.md: {p}", file=sys.stderr)
    if problems and args.check:
        print("run `make readme-figures` to rewrite them from the build", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
