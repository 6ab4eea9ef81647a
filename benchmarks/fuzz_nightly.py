"""Nightly-style fuzzing: the property of tests/test_fuzz.py with many more examples and fresh randomness.

    python benchmarks/fuzz_nightly.py                      # 5000 examples
    FUSER_FUZZ_EXAMPLES=20000 python benchmarks/fuzz_nightly.py
    python benchmarks/fuzz_nightly.py --examples 500 --save-dir /tmp/fuzz_failures

Each failing model is saved (with its inputs as .npz) under --save-dir (default
benchmarks/fuzz_failures/), and hypothesis prints the shrunk example and a `@reproduce_failure` blob.
Exit code: 0 when every example passed, 1 otherwise. CI runs the same property derandomized with
FUSER_FUZZ_EXAMPLES (default 300) examples: `python -m pytest tests/test_fuzz.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=int(os.environ.get("FUSER_FUZZ_EXAMPLES", "5000")))
    parser.add_argument("--save-dir", default=str(ROOT / "benchmarks" / "fuzz_failures"))
    args = parser.parse_args()
    os.environ["FUSER_FUZZ_EXAMPLES"] = str(args.examples)
    os.environ["FUSER_FUZZ_RANDOM"] = "1"
    os.environ["FUSER_FUZZ_SAVE"] = args.save_dir
    for stale in Path(args.save_dir).glob("fuzz_failure*"):  # a failure saved by an earlier run
        stale.unlink()
    import pytest

    start = time.perf_counter()
    code = pytest.main([str(ROOT / "tests" / "test_fuzz.py"), "-q", "-p", "no:cacheprovider",
                        "-k", "test_fuser_keeps_random_graphs_valid_and_equivalent", "--hypothesis-show-statistics"])
    print(f"fuzz_nightly: {args.examples} examples in {time.perf_counter() - start:.0f} s: "
          f"{'passed' if code == 0 else 'FAILED (failing models in ' + args.save_dir + ')'}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
