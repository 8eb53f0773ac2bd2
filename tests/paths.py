"""Where the test suite's shared files are, for tests at any depth of ``tests/``."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CAPTURE = TESTS / "vectors" / "hsmd-capture.jsonl"  # real hsmd exchanges (tests/vectors/README.md)
CHANNELD_EXCHANGES = TESTS / "fixtures" / "channeld_exchanges.json"
