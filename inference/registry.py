"""The models a deployment serves: declared once, in a TOML file named by MODELS_FILE.

    default = "smollm"            # optional: the first model otherwise

    [models.smollm]               # the name people pick and APIs send
    kind = "local"
    path = ""                     # a model folder or a .gguf file; "" = the packaged SmolLM2
    device = "auto"               # auto | cuda | mps | cpu
    context_tokens = 0            # 0: the model's own window
    engine = true                 # false: one reply at a time with model.generate()
    max_batch = 8                 # engine options; left out = the site's ENGINE_* settings
    weights = "auto"              # auto | fp16 | fp32 | bf16 | int4 | int4-decode

    [models.gpu-box]
    kind = "remote"
    base_url = "http://gpu-box:8000/v1"   # any OpenAI-compatible server
    model = "mistralai/Mistral-7B-Instruct-v0.3"  # the model id upstream
    api_key_env = "GPU_BOX_KEY"   # the environment variable holding its key
    repetition_penalty = true     # send it (vLLM, TGI, llama.cpp take it); left out: dropped

Keys are named by environment variable, never written here, so the file can
be shared and committed. With no file, the registry holds one local model,
the one MODEL_PATH names (the packaged default without it): today's setup.

Each local model has its own Celery queue (`queue_for`): a worker started for
a model (`make worker MODEL=<name>`) takes only that model's jobs.
Torch-free: the web process reads this too.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"  # what the packaged model is called
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}")
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# How an engine keeps its weights (see inference/engine/core.py, Engine._store_weights).
WEIGHT_CHOICES = ("auto", "fp16", "fp32", "bf16", "int4", "int4-decode")
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


class RegistryError(ValueError):
    """A models file that cannot be used; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: str = ""  # a model folder or a .gguf file; "" = the packaged default
    device: str = "auto"
    context_tokens: int = 0  # 0: the model's own window
    engine: bool = True
    max_batch: int | None = None  # None: the site's ENGINE_MAX_BATCH
    weights: str | None = None  # None: the site's ENGINE_WEIGHTS
    kind: Literal["local"] = "local"


@dataclass(frozen=True)
class RemoteModel:
    name: str
    base_url: str
    upstream_model: str
    api_key_env: str = ""  # "" for an upstream without a key (a local llama.cpp or Ollama)
    repetition_penalty: bool = False  # whether to send it: vLLM, TGI and llama.cpp take it, OpenAI refuses it
    kind: Literal["remote"] = "remote"


Model = LocalModel | RemoteModel


@dataclass(frozen=True)
class Registry:
    models: tuple[Model, ...]
    default: str

    def get(self, name: str) -> Model | None:
        return next((model for model in self.models if model.name == name), None)

    @property
    def names(self) -> list[str]:
        return [model.name for model in self.models]

    @property
    def local(self) -> list[LocalModel]:
        return [model for model in self.models if isinstance(model, LocalModel)]


def queue_for(name: str) -> str:
    """The Celery queue a model's jobs go to and its workers take them from."""
    return f"generation.{name}"


def own_queue(name: str, hostname: str) -> str:
    """The queue only the worker `hostname` (its Celery node name) takes jobs of model `name` from."""
    return f"{queue_for(name)}@{hostname}"


def name_for_path(model_path: str) -> str:
    """The name a model folder or .gguf file goes by when nobody named it."""
    if not model_path:
        return DEFAULT_MODEL_NAME
    path = Path(model_path).expanduser()
    return path.stem if path.suffix == ".gguf" else path.resolve().name


def single(model_path: str, device: str = "auto", context_tokens: int = 0) -> Registry:
    """The registry without a models file: the one model MODEL_PATH names."""
    model = LocalModel(
        name=name_for_path(model_path), path=model_path, device=device, context_tokens=context_tokens
    )
    return Registry(models=(model,), default=model.name)


def load(path: Path) -> Registry:
    """Read a models file; RegistryError says what is wrong with it and where."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise RegistryError(f"MODELS_FILE {path}: cannot be read ({exc.strerror}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"MODELS_FILE {path}: not valid TOML ({exc}).") from None
    return parse(data, where=str(path))


def parse(data: dict[str, Any], *, where: str = "MODELS_FILE") -> Registry:
    unknown = set(data) - {"default", "models"}
    if unknown:
        raise RegistryError(
            f"{where}: unknown top-level key(s) {sorted(unknown)}; use `default` and [models.<name>]."
        )
    entries = data.get("models")
    if not isinstance(entries, dict) or not entries:
        raise RegistryError(f"{where}: declares no models; add a [models.<name>] table for each.")
    models = tuple(_entry(name, entry, where) for name, entry in entries.items())
    default = data.get("default", models[0].name)
    if default not in {model.name for model in models}:
        names = ", ".join(model.name for model in models)
        raise RegistryError(f"{where}: default = {default!r} is not one of the declared models ({names}).")
    return Registry(models=models, default=default)


def _entry(name: str, entry: Any, where: str) -> Model:
    at = f"{where}: [models.{name}]"
    if not NAME_PATTERN.fullmatch(name):
        raise RegistryError(
            f"{at}: the name must be 1-100 letters, digits and . _ : / - (starting with a letter or digit)."
        )
    if not isinstance(entry, dict):
        raise RegistryError(f"{at}: must be a table of settings.")
    kind = entry.get("kind")
    if kind == "local":
        fields = {
            "path": str,
            "device": str,
            "context_tokens": int,
            "engine": bool,
            "max_batch": int,
            "weights": str,
        }
        values = _fields(at, entry, fields, required=set())
        if values.get("device", "auto") not in DEVICE_CHOICES:
            raise RegistryError(
                f"{at}: device = {values['device']!r}; use one of {', '.join(DEVICE_CHOICES)}."
            )
        if values.get("weights", "auto") not in WEIGHT_CHOICES:
            raise RegistryError(
                f"{at}: weights = {values['weights']!r}; use one of {', '.join(WEIGHT_CHOICES)}."
            )
        for number in ("context_tokens", "max_batch"):
            if values.get(number, 1) < (0 if number == "context_tokens" else 1):
                raise RegistryError(f"{at}: {number} = {values[number]} is too small.")
        return LocalModel(name=name, **values)
    if kind == "remote":
        fields = {"base_url": str, "model": str, "api_key_env": str, "repetition_penalty": bool}
        values = _fields(at, entry, fields, required={"base_url", "model"})
        if not re.match(r"https?://", values["base_url"]):
            raise RegistryError(
                f"{at}: base_url = {values['base_url']!r} must be an http:// or https:// URL."
            )
        key_env = values.get("api_key_env", "")
        if key_env and not ENV_NAME_PATTERN.fullmatch(key_env):
            raise RegistryError(
                f"{at}: api_key_env must name the environment variable that holds the key "
                "(like GPU_BOX_KEY), not the key itself."
            )
        return RemoteModel(
            name=name,
            base_url=values["base_url"].rstrip("/"),
            upstream_model=values["model"],
            api_key_env=key_env,
            repetition_penalty=values.get("repetition_penalty", False),
        )
    raise RegistryError(f'{at}: kind = {kind!r}; use kind = "local" or kind = "remote".')


def _fields(at: str, entry: dict[str, Any], types: dict[str, type], *, required: set[str]) -> dict[str, Any]:
    unknown = set(entry) - set(types) - {"kind"}
    if unknown:
        raise RegistryError(f"{at}: unknown setting(s) {sorted(unknown)}; allowed: {', '.join(types)}.")
    missing = required - set(entry)
    if missing:
        raise RegistryError(f"{at}: missing {', '.join(sorted(missing))}.")
    values = {key: value for key, value in entry.items() if key != "kind"}
    for key, value in values.items():
        expected = types[key]
        # TOML booleans are not ints here, and ints are not bools.
        if type(value) is not expected:
            raise RegistryError(f"{at}: {key} must be a {expected.__name__}, got {value!r}.")
    return values
