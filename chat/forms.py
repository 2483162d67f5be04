from __future__ import annotations

from django import forms
from django.conf import settings

from chat.models import ApiKey, Profile
from inference.params import REPETITION_PENALTY_RANGE, TEMPERATURE_RANGE, TOP_P_RANGE


class ProfileForm(forms.Form):
    display_name = forms.CharField(
        max_length=Profile._meta.get_field("display_name").max_length, required=False
    )
    default_system_prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
        help_text="Used for conversations you start from now on; existing ones keep theirs.",
    )


class DefaultParamsForm(forms.Form):
    """Generation defaults for new conversations; ranges match inference.params."""

    max_new_tokens = forms.IntegerField(min_value=1, max_value=settings.GENERATION_MAX_NEW_TOKENS)
    temperature = forms.FloatField(
        min_value=TEMPERATURE_RANGE.low, max_value=TEMPERATURE_RANGE.high, help_text="0 is greedy."
    )
    top_p = forms.FloatField(min_value=0.01, max_value=TOP_P_RANGE.high)
    repetition_penalty = forms.FloatField(
        min_value=REPETITION_PENALTY_RANGE.low, max_value=REPETITION_PENALTY_RANGE.high
    )


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        max_length=ApiKey._meta.get_field("name").max_length,
        required=False,
        help_text="A label to recognise the key by, e.g. the program that uses it.",
    )
