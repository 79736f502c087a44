"""What the end-to-end modules share: the browser tests' headless Chromium, one for all of
them (``browser``, driven from the test's thread; ``chromium``, on a thread of its own for
the tests whose server runs in this process), started by the first test that takes it and
closed after the last test of tests/e2e/ (a launch is most of a second)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Playwright's Chromium (tests/e2e/test_browser_chat.py ``launched_browser``)."""
    from tests.e2e.test_browser_chat import launched_browser

    yield from launched_browser()


@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    """Chromium on its own thread (tests/e2e/test_browser_pubsub_uni.py ``Chromium``)."""
    from tests.e2e.test_browser_pubsub_uni import running_chromium

    yield from running_chromium()
