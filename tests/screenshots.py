"""Refresh the README's pictures in docs/: ``python -m tests.screenshots``.

The browser tests always take the screenshots, into artifacts/screenshots/;
only this command copies the README's two into docs/, so that a test run
never changes tracked files.
"""

from __future__ import annotations

import os
import sys

import pytest

from tests.test_ui_browser import REFRESH_DOCS


def main() -> int:
    """Run the screenshot test with the refresh switched on."""
    os.environ[REFRESH_DOCS] = "1"
    return int(pytest.main(["-q", "tests/test_ui_browser.py::test_screenshots"]))


if __name__ == "__main__":
    sys.exit(main())
