#!/usr/bin/env python3
"""Mutation run over the *data* of prunecal/corruptions/params.py (the published CIFAR-10-C table).

mutmut 3 mutates code inside functions only, so ``scripts/mutation.sh params`` sees nothing but
``param()``'s 2 mutants; the 205 numbers of ``PARAMS`` are never changed. This script changes
each number of the ``PARAMS`` literal in turn (mutmut's number operator: ``n -> n + 1``),
evaluates the mutated table, and runs the real test
``tests/test_corruptions.py::test_published_parameters_all_severities`` (every corruption) against
it in this process (the test module's ``PARAMS`` replaced). A mutant is killed when any case fails.

    python3 scripts/mutation_params_table.py      # from the repository root; prints the score
"""
from __future__ import annotations

import io
import sys
import time
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_corruptions as TC  # noqa: E402


def numbers(src: str, start: int, end: int) -> list[tuple[int, int, str]]:
    """``(offset, length, text)`` of every number literal between the offsets."""
    offs = [0]
    for line in src.splitlines(True):
        offs.append(offs[-1] + len(line))
    out = []
    for t in tokenize.generate_tokens(io.StringIO(src).readline):
        if t.type == tokenize.NUMBER:
            o = offs[t.start[0] - 1] + t.start[1]
            if start <= o < end:
                out.append((o, len(t.string), t.string))
    return out


def table_of(src: str) -> dict:
    ns: dict = {"__name__": "params_mutant"}
    exec(compile(src, "params_mutant.py", "exec"), ns)  # noqa: S102 - our own source, one number changed
    return ns["PARAMS"]


def killed(table: dict) -> bool:
    TC.PARAMS = table
    for name in TC.ALL:
        try:
            TC.test_published_parameters_all_severities(name)
        except AssertionError:
            return True
    return False


def main() -> int:
    src = (ROOT / "prunecal" / "corruptions" / "params.py").read_text()
    start, end = src.index("PARAMS: dict"), src.index("def param(")
    original = TC.PARAMS
    assert not killed(table_of(src)), "the unmutated table fails the test"
    t0 = time.time()
    survivors = []
    nums = numbers(src, start, end)
    for off, n, text in nums:
        value = float(text) + 1 if any(c in text for c in ".eE") else int(text) + 1
        mutant = src[:off] + repr(value) + src[off + n:]
        if not killed(table_of(mutant)):
            line = src.count("\n", 0, off) + 1
            survivors.append(f"line {line}: {text} -> {value!r}")
    TC.PARAMS = original
    k = len(nums) - len(survivors)
    print(f"params table: {len(nums)} mutants, killed {k}/{len(nums)} = {100 * k / len(nums):.1f} % "
          f"in {time.time() - t0:.1f} s")
    for s in survivors:
        print("  survived:", s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
