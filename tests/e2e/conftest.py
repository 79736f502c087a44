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


@pytest.fixture(autouse=True)
def _no_browser_context_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """The shared Chromium outlives each module: a context a test leaves open (its pages
    reconnecting, to whatever server next listens on that port) would reach the tests
    after it. Each test closes its own; one left is closed here and fails the test."""
    names = [name for name in ("browser", "chromium") if name in request.fixturenames]
    shared = [(name, request.getfixturevalue(name)) for name in names]
    yield
    left = []
    for name, running in shared:

        def close_left(browser: Any) -> int:
            contexts = list(browser.contexts)
            for context in contexts:
                context.close()
            return len(contexts)

        count = close_left(running) if name == "browser" else running.run(close_left)
        if count:
            left.append(f"{count} context(s) of {name}")
    assert not left, f"left open: {', '.join(left)}"
