"""The models file: what it declares, and a clear error for each kind of bad entry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inference import registry
from inference.registry import LocalModel, RemoteModel

EXAMPLE = """
default = "gpu-box"

[models.smollm]
kind = "local"

[models.tiny-two]
kind = "local"
path = "/models/tiny-two"
device = "cpu"
engine = false
max_batch = 4
weights = "fp32"
context_tokens = 2048

[models.gpu-box]
kind = "remote"
base_url = "http://gpu-box:8000/v1/"
model = "mistralai/Mistral-7B-Instruct-v0.3"
api_key_env = "GPU_BOX_KEY"
repetition_penalty = true
"""


def test_a_models_file_declares_local_and_remote_models(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(EXAMPLE)
    declared = registry.load(path)
    assert declared.names == ["smollm", "tiny-two", "gpu-box"]
    assert declared.default == "gpu-box"
    assert declared.get("smollm") == LocalModel(name="smollm")  # the packaged default, site engine settings
    assert declared.get("tiny-two") == LocalModel(
        name="tiny-two",
        path="/models/tiny-two",
        device="cpu",
        engine=False,
        max_batch=4,
        weights="fp32",
        context_tokens=2048,
    )
    assert declared.get("gpu-box") == RemoteModel(
        name="gpu-box",
        base_url="http://gpu-box:8000/v1",
        upstream_model="mistralai/Mistral-7B-Instruct-v0.3",
        api_key_env="GPU_BOX_KEY",
        repetition_penalty=True,
    )
    assert [model.name for model in declared.local] == ["smollm", "tiny-two"]
    assert registry.queue_for("tiny-two") != registry.queue_for("smollm")


def test_without_a_file_the_one_model_model_path_names_is_served() -> None:
    assert registry.single("").names == [registry.DEFAULT_MODEL_NAME]
    only = registry.single("/models/qwen.gguf", device="cpu")
    assert only.default == "qwen" and only.get("qwen") == LocalModel(
        name="qwen", path="/models/qwen.gguf", device="cpu"
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "declares no models"),
        ("[models.a]\nkind = 'local'\n[other]\nx = 1", "unknown top-level key(s) ['other']"),
        ("[models.a]\nkind = 'cloud'", '[models.a]: kind = \'cloud\'; use kind = "local" or kind = "remote"'),
        ("[models.a]\npath = '/m'", "[models.a]: kind = None"),
        ("[models.a]\nkind = 'local'\nmax_batch = 'eight'", "max_batch must be a int, got 'eight'"),
        ("[models.a]\nkind = 'local'\nengine = 1", "engine must be a bool, got 1"),
        ("[models.a]\nkind = 'local'\nmax_batch = 0", "max_batch = 0 is too small"),
        ("[models.a]\nkind = 'local'\ndevice = 'tpu'", "device = 'tpu'; use one of auto, cuda, mps, cpu"),
        ("[models.a]\nkind = 'local'\nweigths = 'fp16'", "unknown setting(s) ['weigths']"),
        ("[models.a]\nkind = 'remote'\nbase_url = 'http://x/v1'", "[models.a]: missing model"),
        (
            "[models.a]\nkind = 'remote'\nbase_url = 'gpu:8000'\nmodel = 'm'",
            "must be an http:// or https:// URL",
        ),
        (
            "[models.a]\nkind = 'remote'\nbase_url = 'http://x/v1'\nmodel = 'm'\napi_key_env = 'sk-12345'",
            "api_key_env must name the environment variable that holds the key",
        ),
        ("[models.'bad name']\nkind = 'local'", "[models.bad name]: the name must be"),
        ("default = 'b'\n[models.a]\nkind = 'local'", "default = 'b' is not one of the declared models (a)"),
        ("[models.a\nkind = 'local'", "not valid TOML"),
    ],
)
def test_a_bad_models_file_is_refused_saying_what_and_where(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(registry.RegistryError) as refused:
        registry.load(path)
    assert str(path) in str(refused.value)
    assert fragment in str(refused.value)


def test_the_site_refuses_to_start_with_a_bad_models_file(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        "[models.a]\nkind = 'remote'\nbase_url = 'http://x/v1'\nmodel = 'm'\napi_key_env = 'sk-live-abc'"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import django; from django.conf import settings; settings.MODEL_REGISTRY"],
        env={"DJANGO_SETTINGS_MODULE": "sanjai_site.settings", "MODELS_FILE": str(path), "PATH": "/usr/bin"},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "api_key_env must name the environment variable" in result.stderr
