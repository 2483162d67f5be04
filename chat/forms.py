from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.models import User
from django.utils.translation import gettext_lazy as _

from chat.models import ApiKey, Profile
from chat.params import FORM_FIELDS
from chat.services import policies


class ProfileForm(forms.Form):
    display_name = forms.CharField(
        label=_("Display name"),
        max_length=Profile._meta.get_field("display_name").max_length,
        required=False,
    )
    email = forms.EmailField(
        label=_("Email"), required=False, help_text=_("Where a password-reset link is sent. Optional.")
    )
    default_system_prompt = forms.CharField(
        label=_("Default system prompt"),
        widget=forms.Textarea(attrs={"rows": 4}),
        max_length=settings.CHAT_MAX_MESSAGE_CHARS,
        required=False,
        help_text=_("Used for conversations you start from now on; existing ones keep theirs."),
    )
    # Each language under its own name, so anyone can find theirs whatever the page is in.
    language = forms.ChoiceField(
        label=_("Language"),
        choices=[("", _("The browser's language")), *settings.LANGUAGES],
        required=False,
        help_text=_("The language of these pages. Replies are in whatever language the model writes."),
    )


class DefaultParamsForm(forms.Form):
    """Generation defaults for new conversations; ranges from the one parameter schema."""

    max_new_tokens = forms.IntegerField(
        label=_("Max new tokens"), min_value=1, max_value=int(FORM_FIELDS["max_new_tokens"].max)
    )
    temperature = forms.FloatField(
        label=_("Temperature"),
        min_value=FORM_FIELDS["temperature"].min,
        max_value=FORM_FIELDS["temperature"].max,
        help_text=_("0 is greedy."),
    )
    top_p = forms.FloatField(
        label=_("Top p"), min_value=FORM_FIELDS["top_p"].min, max_value=FORM_FIELDS["top_p"].max
    )
    repetition_penalty = forms.FloatField(
        label=_("Repetition penalty"),
        min_value=FORM_FIELDS["repetition_penalty"].min,
        max_value=FORM_FIELDS["repetition_penalty"].max,
    )


class PresetForm(DefaultParamsForm):
    """A new preset: its name, what it says, and the defaults a chat started from it gets."""

    field_order = ["name", "description", "system_prompt", "model"]
    prefix = "preset"  # beside the profile's own defaults form on one page: ids of its own

    name = forms.CharField(label=_("Name"), max_length=100)
    description = forms.CharField(label=_("Description"), max_length=300, required=False)
    system_prompt = forms.CharField(
        label=_("System prompt"),
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=settings.CHAT_MAX_MESSAGE_CHARS,
        required=False,
    )
    model = forms.ChoiceField(
        label=_("Model"), choices=(), required=False, help_text=_("Empty: the site's default model.")
    )

    def __init__(self, *args: Any, user: User | None = None, **kwargs: Any) -> None:
        """`user`: offer only the models their groups let them use (chat.services.policies)."""
        super().__init__(*args, **kwargs)
        model = self.fields["model"]
        assert isinstance(model, forms.ChoiceField)
        names = settings.MODEL_REGISTRY.names if user is None else policies.models_for(user=user)
        model.choices = [("", _("(default)")), *((name, name) for name in names)]


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        label=_("Name"),
        max_length=ApiKey._meta.get_field("name").max_length,
        required=False,
        help_text=_("A label to recognise the key by, e.g. the program that uses it."),
    )
