"""Settings from the environment: a bad value stops the start with a message naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sanjai_site.env import ConfigError, envchoice

ROOT = Path(__file__).resolve().parent.parent


def test_a_choice_is_read_case_blind_and_an_unknown_one_names_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    choices = ("auto", "fp16", "fp32")
    monkeypatch.delenv("ENGINE_WEIGHTS", raising=False)
    assert envchoice("ENGINE_WEIGHTS", "auto", choices) == "auto"
    monkeypatch.setenv("ENGINE_WEIGHTS", " FP32 ")
    assert envchoice("ENGINE_WEIGHTS", "auto", choices) == "fp32"
    monkeypatch.setenv("ENGINE_WEIGHTS", "int4")
    with pytest.raises(ConfigError, match=r"ENGINE_WEIGHTS='int4': expected one of auto, fp16, fp32"):
        envchoice("ENGINE_WEIGHTS", "auto", choices)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ENGINE_WEIGHTS", "int8", "ENGINE_WEIGHTS='int8': expected one of auto, fp16, fp32, bf16, int4"),
        ("QUANTIZE", "int8", "QUANTIZE is gone: set ENGINE_WEIGHTS (auto, fp16, fp32, bf16, int4, int4-"),
        ("ENGINE_PREFILL_CHUNK_TOKENS", "12", "ENGINE_PREFILL_CHUNK_TOKENS is gone: each pass"),
        ("ENGINE_GAP_RATIO", "0.5", "ENGINE_*: gap_ratio=0.5: expected at least 1.0"),
    ],
)
def test_the_site_refuses_to_start_with_a_bad_engine_setting(
    name: str, value: str, message: str, tmp_path: Path
) -> None:
    env = {**os.environ, "SANJAI_DATA_DIR": str(tmp_path), name: value}
    result = subprocess.run(
        [sys.executable, "-c", "import sanjai_site.settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_behind_a_tls_proxy_cookies_are_secure_and_hsts_is_sent(tmp_path: Path) -> None:
    code = (
        "from django.conf import settings as s;"
        "print(s.SECURE_PROXY_SSL_HEADER, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE,"
        " s.SECURE_HSTS_SECONDS)"
    )

    def read(**env: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); {code}"],
            cwd=ROOT,
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "sanjai_site.settings",
                "SANJAI_DATA_DIR": str(tmp_path),
                **env,
            },
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip()

    assert read() == "None False False 0"
    assert read(TLS_PROXY="true") == "('HTTP_X_FORWARDED_PROTO', 'https') True True 31536000"
    assert (
        read(TLS_PROXY="true", SECURE_HSTS_SECONDS="300")
        == "('HTTP_X_FORWARDED_PROTO', 'https') True True 300"
    )
