from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.stack import CHROMIUM, CHROMIUM_ARGS, Stack, stack_on_test_database

# How long a page action may take here: shared machines can be slow.
TIMEOUT_MS = 20_000

# Playwright's sync API keeps an event loop running on the main thread, and
# Django refuses ORM calls from a thread with a running loop. The tests' own
# ORM calls are plain synchronous code, so this is safe here.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


# Files over this are refused on the shared stack, so that a test can send one quickly.
SHARED_DOCUMENT_MAX_BYTES = 100_000


@pytest.fixture(scope="session")
def shared_stack(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for the browser modules that need nothing special of it (search, voice,
    languages, documents): a stack starts in 20-30 s here, and each module had its own.
    The tiny model's context holds retrieved passages beside a question and its reply."""
    from tests.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path_factory.mktemp("shared-browser-model"), context_tokens=4096)
    env = {
        "MODEL_PATH": str(model),
        "DOCUMENT_MAX_BYTES": str(SHARED_DOCUMENT_MAX_BYTES),
        # This stack lives beside the modules' own stacks on the one test database, each
        # with its own Redis. Its web process's sweeper would see their streaming replies'
        # workers missing from its Redis and fail them as lost ("The worker stopped while
        # writing this reply"), or queue their tool-waiting replies to its own workers.
        # None of its tests needs a sweep, so it has none.
        "REPLY_SWEEP_INTERVAL_S": "0",
    }
    with stack_on_test_database(name="browser-shared", env=env, documents=True) as running:
        yield running


# One Chromium per test module, and a fresh context per test on the module's own
# stack (each browser test module defines `stack`; the voice tests their own browser).
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    context = browser.new_context(base_url=stack.base_url, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
