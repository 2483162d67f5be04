"""A user's profile: display name, default system prompt, default generation parameters, theme."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User

from chat import params as chat_params
from chat.models import Profile
from chat.services.limits import check_length
from inference.params import GenerationParams


def profile_get_or_create(*, user: User) -> Profile:
    profile, _ = Profile.objects.get_or_create(user=user)
    return profile


def profile_update(
    *, user: User, display_name: str, default_system_prompt: str, email: str = "", language: str | None = None
) -> Profile:
    """Save the user's profile; the system prompt applies to conversations created later.

    The email address is the one password-reset links go to. `language`: one of
    settings.LANGUAGES for the pages, "" for the browser's (ValueError otherwise),
    None to keep the one chosen.
    """
    if language and language not in {code for code, _name in settings.LANGUAGES}:
        raise ValueError(f"language: must be empty or one of {', '.join(c for c, _n in settings.LANGUAGES)}.")
    if email != user.email:
        user.email = email
        user.save(update_fields=["email"])
    profile = profile_get_or_create(user=user)
    profile.display_name = display_name.strip()
    profile.default_system_prompt = check_length("default_system_prompt", default_system_prompt.strip())
    fields = ["display_name", "default_system_prompt"]
    if language is not None:
        profile.language = language
        fields.append("language")
    profile.save(update_fields=fields)
    return profile


def profile_theme_update(*, user: User, theme: str) -> Profile:
    """Save the pages' colour theme: light, dark or system (ValueError for anything else)."""
    if theme not in Profile.Theme.values:
        raise ValueError(f"theme: must be one of {', '.join(Profile.Theme.values)}.")
    profile = profile_get_or_create(user=user)
    profile.theme = theme
    profile.save(update_fields=["theme"])
    return profile


def profile_defaults_update(*, user: User, params: dict[str, Any]) -> Profile:
    """Save the generation defaults for the user's new conversations (InvalidParameter if bad)."""
    profile = profile_get_or_create(user=user)
    given = chat_params.params_in({field: params.get(field) for field in chat_params.CHAT_PARAM_FIELDS})
    profile.default_params = chat_params.chat_params(chat_params.over(given, chat_params.site_defaults()))
    profile.save(update_fields=["default_params"])
    return profile


def params_for_new_conversations(*, user: User) -> GenerationParams:
    """The owner's profile defaults over the site's."""
    return chat_params.stored_over(
        profile_get_or_create(user=user).default_params, chat_params.site_defaults()
    )
