"""Single sign-on (chat/sso.py) against a real OpenID Connect provider.

The provider is django-oauth-toolkit (tests/oidc_provider/), started in a
process of its own on a free port with an RS256 key made for this session.
SanjAI runs in the test's process behind Django's test Client; the provider's
login form is filled in over HTTP with httpx, as a browser would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth.models import User
from django.test import Client

from chat import sso
from chat.models import OidcIdentity

REPO = Path(__file__).resolve().parent.parent
CLIENT_ID = "sanjai-test"
CLIENT_SECRET = "sanjai-test-secret"
CALLBACK = "http://testserver/oidc/callback/"
PROVIDER_USER, PROVIDER_PASSWORD = "alice", "provider-password-1"


@dataclass
class Provider:
    issuer: str
    groups_file: Path
    server: subprocess.Popen[bytes]

    def groups(self, names: list[str]) -> None:
        self.groups_file.write_text(json.dumps(names))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _running_provider(home: Path, callback: str = CALLBACK) -> Iterator[Provider]:
    """A fresh provider (database, key, user, client) serving on a free port until the block ends;
    SanjAI's client may be sent back to `callback` only."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.oidc_provider.settings",
        "PROVIDER_DB": str(home / "provider.sqlite3"),
        "PROVIDER_RSA_KEY": pem.decode(),
        "PROVIDER_GROUPS_FILE": str(home / "groups.json"),
        "PYTHONPATH": str(REPO),
    }
    bootstrap_args = [PROVIDER_USER, PROVIDER_PASSWORD, CLIENT_ID, CLIENT_SECRET, callback]
    subprocess.run(
        [sys.executable, "tests/oidc_provider/bootstrap.py", *bootstrap_args],
        cwd=REPO,
        env=env,
        check=True,
        timeout=120,
    )
    port = _free_port()
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "django", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        discovery_url = f"http://127.0.0.1:{port}/o/.well-known/openid-configuration"
        deadline = time.monotonic() + 60
        while True:
            try:
                issuer = httpx.get(discovery_url, timeout=2).raise_for_status().json()["issuer"]
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(
                        f"the test provider did not start: {(home / 'server.log').read_text()}"
                    ) from None
                time.sleep(0.2)
        yield Provider(issuer=issuer.rstrip("/"), groups_file=home / "groups.json", server=server)
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    with _running_provider(tmp_path_factory.mktemp("oidc-provider")) as running:
        yield running


def _sso_settings(settings: Any, provider: Provider) -> None:
    settings.OIDC_ISSUER = provider.issuer
    settings.OIDC_CLIENT_ID = settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, "chat.sso.SsoBackend"]
    sso._discovered.clear()
    provider.groups([])


@pytest.fixture
def sso_on(settings: Any, provider: Provider) -> Provider:
    _sso_settings(settings, provider)
    return provider


def _to_callback(client: Client) -> str:
    """Start a sign-in at SanjAI and log into the provider; the callback URL it sends the browser to."""
    start = client.get("/oidc/authenticate/")
    assert start.status_code == 302, start.content
    authorize = start["Location"]
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        login_url = urljoin(authorize, browser.get(authorize).headers["location"])
        page = browser.get(login_url)
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert match, page.text
        form = {
            "csrfmiddlewaretoken": match.group(1),
            "username": PROVIDER_USER,
            "password": PROVIDER_PASSWORD,
            "next": parse_qs(urlsplit(login_url).query)["next"][0],
        }
        logged_in = browser.post(login_url, data=form)
        assert logged_in.status_code == 302, logged_in.text
        back = browser.get(urljoin(login_url, logged_in.headers["location"]))
        assert back.status_code == 302, back.text
        callback: str = back.headers["location"]
    assert callback.startswith(CALLBACK), callback
    return callback


def _sso_login(client: Client) -> Any:
    callback = urlsplit(_to_callback(client))
    return client.get(f"{callback.path}?{callback.query}")


@pytest.mark.django_db
def test_first_login_creates_an_account_linked_by_subject_not_email(sso_on: Provider) -> None:
    # A local account with the provider user's name and email: SSO must not take it over.
    local = User.objects.create_user("alice", email="alice@provider.test", password="local-password-1")
    sso_on.groups(["staff"])
    client = Client()
    response = _sso_login(client)
    assert response.status_code == 302
    identity = OidcIdentity.objects.get(issuer=sso_on.issuer)
    assert identity.user != local
    assert identity.user.username == "alice-2"
    assert not identity.user.has_usable_password()
    assert [g.name for g in identity.user.groups.all()] == ["staff"]
    assert client.get("/").wsgi_request.user == identity.user


@pytest.mark.django_db
def test_second_login_syncs_groups_from_the_claim(sso_on: Provider, settings: Any) -> None:
    sso_on.groups(["ops", "staff"])
    assert _sso_login(Client()).status_code == 302
    settings.SIGNUP = "closed"  # closes sign-up, not the door to linked accounts
    sso_on.groups(["ops", "research"])
    assert _sso_login(Client()).status_code == 302
    identity = OidcIdentity.objects.get()
    assert sorted(g.name for g in identity.user.groups.all()) == ["ops", "research"]
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_tampered_state_is_refused(sso_on: Provider) -> None:
    client = Client()
    callback = urlsplit(_to_callback(client))
    query = re.sub(r"state=[^&]+", "state=tampered", callback.query)
    response = client.get(f"{callback.path}?{query}")
    assert response.status_code == 400
    assert b"could not be checked" in response.content
    assert not OidcIdentity.objects.exists()
    assert not client.get("/").wsgi_request.user.is_authenticated


@pytest.mark.django_db
def test_a_replayed_callback_is_refused(sso_on: Provider) -> None:
    """A callback URL (its code and state) used a second time opens nothing, whoever sends it."""
    client = Client()
    callback = urlsplit(_to_callback(client))
    url = f"{callback.path}?{callback.query}"
    assert client.get(url).status_code == 302  # the sign-in itself
    client.post("/logout/")
    for replayer in (client, Client()):  # the same browser after logging out, or another one
        replayed = replayer.get(url)
        # Its state is no longer in any session: refused before the code reaches the provider.
        assert (replayed.status_code, b"refused this sign-in" in replayed.content) == (403, True)
        assert not replayer.get("/").wsgi_request.user.is_authenticated
    assert User.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("closed", b"Sign-up is closed on this server"),
        ("invite", b"by invitation, which single sign-on cannot use"),
    ],
)
def test_first_login_refused_readably_unless_signup_is_open(
    sso_on: Provider, settings: Any, mode: str, says: bytes
) -> None:
    settings.SIGNUP = mode
    response = _sso_login(Client())
    assert response.status_code == 403
    assert says in response.content
    assert not User.objects.exists()


@pytest.mark.django_db
def test_provider_down_gives_a_readable_page(sso_on: Provider, settings: Any) -> None:
    settings.OIDC_ISSUER = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    response = Client().get("/oidc/authenticate/")
    assert response.status_code == 502
    assert b"did not answer" in response.content


@pytest.mark.django_db
def test_login_page_offers_sso_only_when_on(settings: Any, provider: Provider) -> None:
    settings.OIDC_ISSUER = ""
    assert b"Sign in with" not in Client().get("/login/").content
    assert Client().get("/oidc/authenticate/").status_code == 404
    settings.OIDC_ISSUER = provider.issuer
    settings.OIDC_PROVIDER_NAME = "Test Provider"
    assert b"Sign in with Test Provider" in Client().get("/login/").content


@pytest.mark.django_db
def test_logout_ends_the_session_here_and_at_the_provider(sso_on: Provider) -> None:
    client = Client()
    assert _sso_login(client).status_code == 302
    response = client.post("/oidc/logout/")
    assert response.status_code == 302
    end_session = response["Location"]
    assert end_session.startswith(f"{sso_on.issuer}/logout/")
    assert "id_token_hint=" in end_session
    assert not client.get("/").wsgi_request.user.is_authenticated
    # The provider accepts the hint (a bad one is answered 400).
    assert httpx.get(end_session, timeout=10).status_code < 400


@pytest.mark.django_db
def test_the_pages_log_out_goes_to_the_provider_only_for_its_own_sessions(
    sso_on: Provider, django_user_model: Any
) -> None:
    """The header's Log out ends an SSO session at the provider too; a local sign-in only here."""
    admin = django_user_model.objects.create_user("break-glass", password="pw-for-tests")
    client = Client()
    client.force_login(admin)
    assert 'action="/oidc/logout/"' in client.get("/profile/").content.decode()
    local = client.post("/oidc/logout/")
    assert local.status_code == 302 and local["Location"] == "/login/"
    assert not client.get("/").wsgi_request.user.is_authenticated


@pytest.mark.django_db
def test_provider_stopped_mid_login_gives_a_readable_page(settings: Any, tmp_path: Path) -> None:
    with _running_provider(tmp_path) as short_lived:
        _sso_settings(settings, short_lived)
        client = Client()
        callback = urlsplit(_to_callback(client))
        short_lived.server.terminate()
        short_lived.server.wait(timeout=10)
        # The code is exchanged at the token endpoint, which no longer answers.
        response = client.get(f"{callback.path}?{callback.query}")
    assert response.status_code == 502
    assert b"did not answer (ConnectionError)" in response.content
    assert not User.objects.exists()


def _settings_of(tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            f"import django; django.setup(); from django.conf import settings as s; {code}",
        ],
        cwd=REPO,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "sanjai_site.settings",
            "SANJAI_DATA_DIR": str(tmp_path),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sso_settings_are_off_by_default_and_read_the_secret_from_a_named_variable(tmp_path: Path) -> None:
    code = "print('chat.sso.SsoBackend' in s.AUTHENTICATION_BACKENDS, s.OIDC_RP_CLIENT_SECRET)"
    assert _settings_of(tmp_path, code).stdout.split() == ["False"]
    on = _settings_of(
        tmp_path,
        code,
        OIDC_ISSUER="https://id.example/",
        OIDC_CLIENT_ID="sanjai",
        OIDC_CLIENT_SECRET_ENV="MY_SSO_SECRET",
        MY_SSO_SECRET="s3cret",
    )
    assert on.stdout.split() == ["True", "s3cret"], on.stderr
    missing = _settings_of(tmp_path, code, OIDC_ISSUER="https://id.example")
    assert missing.returncode != 0
    assert "OIDC_CLIENT_ID is empty" in missing.stderr


@pytest.mark.django_db
def test_password_sign_in_can_be_left_to_the_break_glass_administrators_only(
    sso_on: Provider, settings: Any, tmp_path: Path
) -> None:
    from chat.services.accounts import api_key_create

    settings.LOCAL_LOGIN = "superusers"
    settings.AUTHENTICATION_BACKENDS = [
        "chat.auth.BreakGlassBackend" if b.endswith("ModelBackend") else b
        for b in settings.AUTHENTICATION_BACKENDS
    ]
    member = User.objects.create_user("bob", password="a long local password")
    User.objects.create_superuser("root", password="the break glass secret")

    page = Client().get("/login/").content
    assert b"Sign in with" in page and b"for the site's administrators only" in page
    assert b"Sign up" not in page
    refused = Client().post("/login/", {"username": "bob", "password": "a long local password"})
    assert refused.status_code == 200 and "Password sign-in is turned off here" in refused.content.decode()
    assert not refused.wsgi_request.user.is_authenticated
    # The admin's own login form refuses the password too.
    admin = Client().post("/admin/login/", {"username": "bob", "password": "a long local password"})
    assert not admin.wsgi_request.user.is_authenticated
    root = Client()
    assert root.post("/login/", {"username": "root", "password": "the break glass secret"}).status_code == 302
    assert root.get("/").wsgi_request.user.username == "root"
    assert Client().get("/signup/").status_code == 403
    # Programs keep their keys; members sign in through the provider.
    key = api_key_create(user=member, name="script")[1]
    assert (
        Client().get("/api/v1/conversations", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    )
    assert _sso_login(Client()).status_code == 302

    without_sso = _settings_of(tmp_path, "print(s.LOCAL_LOGIN)", LOCAL_LOGIN="superusers")
    assert without_sso.returncode != 0 and "needs single sign-on" in without_sso.stderr


@pytest.mark.django_db
def test_readyz_reports_the_providers_discovery_without_failing_because_of_it(
    sso_on: Provider, settings: Any
) -> None:
    up = Client().get("/readyz")
    assert up.json()["sso"] == {"discovery": "fetched"}
    settings.OIDC_ISSUER = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    down = Client().get("/readyz")
    assert down.status_code == up.status_code  # readiness is the database's, Redis's and workers'
    assert down.json()["sso"]["discovery"] == "failed"
    assert "could not be fetched (ConnectionError)" in down.json()["sso"]["error"]
    assert "127.0.0.1" not in down.json()["sso"]["error"]
    settings.OIDC_ISSUER = ""
    assert "sso" not in Client().get("/readyz").json()


@pytest.mark.django_db
def test_a_local_account_can_be_linked_to_the_provider_and_keeps_its_conversations(
    sso_on: Provider,
) -> None:
    from chat.services import conversations

    local = User.objects.create_user("alice", password="local-password-1")
    mine = conversations.conversation_create(user=local, title="Years of notes")
    client = Client()
    client.force_login(local)
    assert b"Link to single sign-on" in client.get("/profile/").content
    started = client.post("/profile/sso-link/")
    assert started.status_code == 302 and started["Location"].startswith("/oidc/authenticate/")
    assert _sso_login(client).status_code == 302
    identity = OidcIdentity.objects.get()
    assert identity.user == local and User.objects.count() == 1
    assert b"Link to single sign-on" not in client.get("/profile/").content  # linked: nothing to offer

    # From now on the provider's sign-in opens this account, with its conversations.
    fresh = Client()
    assert _sso_login(fresh).status_code == 302
    assert fresh.get("/").wsgi_request.user == local
    assert fresh.get(f"/c/{mine.pk}/").status_code == 200

    # Another local account cannot take the same identity.
    other = User.objects.create_user("alice2", password="local-password-2")
    thief = Client()
    thief.force_login(other)
    thief.post("/profile/sso-link/")
    taken = _sso_login(thief)
    assert taken.status_code == 409 and b"already opens another SanjAI account" in taken.content
    assert OidcIdentity.objects.get().user == local
    assert thief.get("/profile/sso-link/").status_code == 405  # a POST only: no other site starts it


@pytest.mark.django_db
def test_the_admin_lists_which_account_each_identity_opens(sso_on: Provider, admin_client: Client) -> None:
    assert _sso_login(Client()).status_code == 302
    identity = OidcIdentity.objects.get()
    listing = admin_client.get("/admin/chat/oidcidentity/")
    assert listing.status_code == 200 and identity.subject.encode() in listing.content
    assert admin_client.get(f"/admin/chat/oidcidentity/{identity.pk}/change/").status_code == 200
    assert admin_client.get("/admin/chat/oidcidentity/add/").status_code == 403  # made by sign-ins only


@pytest.mark.django_db(transaction=True)
def test_two_first_sign_ins_of_one_person_at_once_make_one_account(
    sso_on: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tabs finishing their first sign-in together: both find no account, both try to
    make one. The second must open the first's, not fail on the identity's uniqueness."""
    first = Client()
    assert _sso_login(first).status_code == 302
    made = OidcIdentity.objects.get().user
    # The second looks the subject up before the first's account exists: it finds nothing.
    monkeypatch.setattr(sso.SsoBackend, "filter_users_by_claims", lambda self, claims: User.objects.none())
    second = Client()
    assert _sso_login(second).status_code == 302
    assert second.get("/").wsgi_request.user == made
    assert User.objects.count() == 1 and OidcIdentity.objects.count() == 1


@pytest.mark.django_db
def test_the_pages_forms_may_send_the_browser_to_the_provider_and_nowhere_else(
    settings: Any, provider: Provider
) -> None:
    """Browsers hold a form's redirects to the CSP's form-action: "Sign in with" (a GET
    form) and "Log out" (a POST) end at the provider, which must be allowed there."""
    settings.OIDC_ISSUER = ""
    assert "form-action 'self';" in Client().get("/login/")["Content-Security-Policy"]
    settings.OIDC_ISSUER = provider.issuer
    origin = provider.issuer.removesuffix("/o")
    assert f"form-action 'self' {origin};" in Client().get("/login/")["Content-Security-Policy"]
