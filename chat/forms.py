from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.models import User

from chat.models import ApiKey, Profile
from chat.params import FORM_FIELDS
from chat.services import policies


class ProfileForm(forms.Form):
    display_name = forms.CharField(
        max_length=Profile._meta.get_field("display_name").max_length, required=False
    )
    email = forms.EmailField(required=False, help_text="Where a password-reset link is sent. Optional.")
    default_system_prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        max_length=settings.CHAT_MAX_MESSAGE_CHARS,
        required=False,
        help_text="Used for conversations you start from now on; existing ones keep theirs.",
    )


class DefaultParamsForm(forms.Form):
    """Generation defaults for new conversations; ranges from the one parameter schema."""

    max_new_tokens = forms.IntegerField(min_value=1, max_value=int(FORM_FIELDS["max_new_tokens"].max))
    temperature = forms.FloatField(
        min_value=FORM_FIELDS["temperature"].min,
        max_value=FORM_FIELDS["temperature"].max,
        help_text="0 is greedy.",
    )
    top_p = forms.FloatField(min_value=FORM_FIELDS["top_p"].min, max_value=FORM_FIELDS["top_p"].max)
    repetition_penalty = forms.FloatField(
        min_value=FORM_FIELDS["repetition_penalty"].min, max_value=FORM_FIELDS["repetition_penalty"].max
    )


class PresetForm(DefaultParamsForm):
    """A new preset: its name, what it says, and the defaults a chat started from it gets."""

    field_order = ["name", "description", "system_prompt", "model"]
    prefix = "preset"  # beside the profile's own defaults form on one page: ids of its own

    name = forms.CharField(max_length=100)
    description = forms.CharField(max_length=300, required=False)
    system_prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), max_length=settings.CHAT_MAX_MESSAGE_CHARS, required=False
    )
    model = forms.ChoiceField(choices=(), required=False, help_text="Empty: the site's default model.")

    def __init__(self, *args: Any, user: User | None = None, **kwargs: Any) -> None:
        """`user`: offer only the models their groups let them use (chat.services.policies)."""
        super().__init__(*args, **kwargs)
        model = self.fields["model"]
        assert isinstance(model, forms.ChoiceField)
        names = settings.MODEL_REGISTRY.names if user is None else policies.models_for(user=user)
        model.choices = [("", "(default)"), *((name, name) for name in names)]


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        max_length=ApiKey._meta.get_field("name").max_length,
        required=False,
        help_text="A label to recognise the key by, e.g. the program that uses it.",
    )
