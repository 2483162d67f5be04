"""Single sign-on in a real browser: SanjAI's login page, the provider's, and back, signed in.

The provider is the same real one as tests/test_sso.py's (django-oauth-toolkit in a
process of its own), registered with this test's live server as its redirect URI.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from chat import sso
from chat.models import OidcIdentity
from tests.browser.conftest import TIMEOUT_MS
from tests.stack import ARTIFACTS
from tests.test_sso import (
    CLIENT_ID,
    CLIENT_SECRET,
    PROVIDER_PASSWORD,
    PROVIDER_USER,
    Provider,
    _running_provider,
)

pytestmark = pytest.mark.django_db(transaction=True)
expect.set_options(timeout=TIMEOUT_MS)  # shared machines can be slow


@pytest.fixture
def provider(live_server: Any, tmp_path: Any, settings: Any) -> Iterator[Provider]:
    with _running_provider(tmp_path, callback=f"{live_server.url}/oidc/callback/") as running:
        settings.OIDC_ISSUER = running.issuer
        settings.OIDC_CLIENT_ID = settings.OIDC_RP_CLIENT_ID = CLIENT_ID
        settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
        settings.OIDC_PROVIDER_NAME = "Test Provider"
        settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, "chat.sso.SsoBackend"]
        sso._discovered.clear()
        running.groups(["research"])
        yield running


def test_a_person_signs_in_with_the_provider_and_out_again(
    browser: Browser, live_server: Any, provider: Provider
) -> None:
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto("/login/")
    page.get_by_role("button", name="Sign in with Test Provider").click()
    # The provider's own login form, on its own origin.
    expect(page).to_have_url(re.compile(re.escape(provider.issuer.split("/o")[0])))
    page.fill("input[name=username]", PROVIDER_USER)
    page.fill("input[name=password]", PROVIDER_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    # Back at SanjAI, signed in: the chat page, and an account made for the subject.
    expect(page).to_have_url(re.compile(rf"^{re.escape(live_server.url)}/$"))
    expect(page.locator("#input")).to_be_visible()
    identity = OidcIdentity.objects.get(issuer=provider.issuer)
    assert identity.user.username == PROVIDER_USER
    assert [g.name for g in identity.user.groups.all()] == ["research"]
    page.screenshot(path=str(ARTIFACTS / "sso-signed-in.png"))

    # Log out ends the session here (and goes on to the provider's end-session endpoint).
    page.get_by_role("button", name="Log out").click()
    page.wait_for_load_state()
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/"))
    context.close()
