#!/usr/bin/env python3
"""Runs the integration tests (tests/integration/test_*.py) against the built binaries.

Usage: run.py [PATTERN ...]   PATTERN selects tests whose id contains it.
Ends with the line "integration: N passed, N failed" and exits non-zero on any failure.
"""
import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def main():
    patterns = sys.argv[1:]
    loader = unittest.TestLoader()
    suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    selected = unittest.TestSuite()
    for t in iter_tests(suite):
        # A module that fails to import is a test named after the loader, not the module:
        # keep it whatever was selected, so that it fails instead of silently selecting less.
        if (not patterns or any(p in t.id() for p in patterns) or
                t.id().startswith("unittest.loader._FailedTest")):
            selected.addTest(t)
    if selected.countTestCases() == 0:
        print("integration: no test selected", file=sys.stderr)
        return 1
    start = time.monotonic()
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(selected)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    print("integration took %.0fs" % (time.monotonic() - start))
    print("integration: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 0 if failed == 0 and skipped == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
