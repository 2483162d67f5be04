"""Presets (assistants): make, change and delete your own; an admin publishes one to everybody.

A preset is a system prompt, a model and the chat page's parameters under a
name. A new chat started from one copies them (`conversation_create(preset=...)`),
so changing a preset later leaves its conversations as they were. On /v1 a
preset is the model id `preset:<slug>` (chat.lifecycle.submit resolves it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from chat import params as chat_params
from chat import selectors
from chat.models import Preset
from chat.services.limits import InvalidInput, check_length, check_model

MAX_PRESETS = 200  # per user: a list people pick from, not a store


def _fields(
    *,
    name: str | None,
    description: str | None,
    system_prompt: str | None,
    model: str | None,
    params: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The given fields, checked as everywhere: InvalidInput or InvalidParameter names the bad one."""
    fields: dict[str, Any] = {}
    if name is not None:
        name = " ".join(name.split())
        if not 1 <= len(name) <= 100 or not _slug_of(name):
            raise InvalidInput("name", "must be 1 to 100 characters, with at least one letter or digit.")
        fields["name"] = name
    if description is not None:
        if len(description) > 300:
            raise InvalidInput("description", f"must be at most 300 characters, got {len(description)}.")
        fields["description"] = description.strip()
    if system_prompt is not None:
        fields["system_prompt"] = check_length("system_prompt", system_prompt.strip())
    if model is not None:
        fields["model"] = check_model(model) if model else ""
    if params is not None:
        unknown = set(params) - set(chat_params.CHAT_PARAM_FIELDS)
        if unknown:
            raise InvalidInput(
                "params",
                f"{', '.join(sorted(unknown))} cannot be kept in a preset; "
                f"it keeps {', '.join(chat_params.CHAT_PARAM_FIELDS)}.",
            )
        fields["params"] = chat_params.params_in(params).model_dump(exclude_none=True)
    return fields


def _slug_of(name: str) -> str:
    """A name's slug, in any script (日本語の先生 keeps its letters)."""
    return slugify(name, allow_unicode=True)


def _free_slug(user: User, name: str, exclude: int | None = None) -> str:
    base = _slug_of(name)[:90]
    mine = Preset.objects.filter(owner=user)
    if exclude is not None:
        mine = mine.exclude(pk=exclude)
    taken = set(mine.values_list("slug", flat=True))
    slug, number = base, 2
    while slug in taken:
        slug, number = f"{base}-{number}", number + 1
    return slug


def preset_create(
    *,
    user: User,
    name: str,
    description: str = "",
    system_prompt: str = "",
    model: str = "",
    params: Mapping[str, Any] | None = None,
) -> Preset:
    fields = _fields(
        name=name, description=description, system_prompt=system_prompt, model=model, params=params or {}
    )
    if Preset.objects.filter(owner=user).count() >= MAX_PRESETS:
        raise InvalidInput(
            "name", f"you have {MAX_PRESETS} presets, the most one may keep; delete one first."
        )
    for _ in range(3):  # two makes of one name at once (a double click) race for its slug
        try:
            with transaction.atomic():
                return Preset.objects.create(owner=user, slug=_free_slug(user, fields["name"]), **fields)
        except IntegrityError:
            continue
    raise InvalidInput("name", "a preset of this name is being made already; try again.")


def preset_update(
    *,
    user: User,
    preset_id: int,
    name: str | None = None,
    description: str | None = None,
    system_prompt: str | None = None,
    model: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> Preset:
    """Change your own preset (Preset.DoesNotExist for anyone else's); a new name gives a new slug.

    A published preset that changes is published no more: what everybody is
    offered is what an admin published, so the admin publishes it again.
    """
    preset = selectors.preset_own(user=user, preset_id=preset_id)
    fields = _fields(
        name=name, description=description, system_prompt=system_prompt, model=model, params=params
    )
    if "name" in fields and fields["name"] != preset.name:
        fields["slug"] = _free_slug(user, fields["name"], exclude=preset.pk)
    if preset.published and any(getattr(preset, field) != value for field, value in fields.items()):
        fields["published"] = False
    for field, value in fields.items():
        setattr(preset, field, value)
    try:
        with transaction.atomic():
            preset.save()
    except IntegrityError:  # a published preset's new slug taken by another published one
        raise InvalidInput("name", "another published preset has this name; choose another.") from None
    return preset


def preset_delete(*, user: User, preset_id: int) -> None:
    """Delete your own preset; conversations started from it keep what they copied."""
    selectors.preset_own(user=user, preset_id=preset_id).delete()


def preset_publish(*, preset: Preset, published: bool) -> bool:
    """An admin offers a preset to everybody, or stops; False if a published one already has its slug."""
    try:
        with transaction.atomic():
            Preset.objects.filter(pk=preset.pk).update(published=published)
    except IntegrityError:
        return False
    preset.published = published
    return True
