from __future__ import annotations

from django import forms

from chat.models import ApiKey, Profile


class ProfileForm(forms.Form):
    display_name = forms.CharField(
        max_length=Profile._meta.get_field("display_name").max_length, required=False
    )
    default_system_prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
        help_text="Used for conversations you start from now on; existing ones keep theirs.",
    )


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        max_length=ApiKey._meta.get_field("name").max_length,
        required=False,
        help_text="A label to recognise the key by, e.g. the program that uses it.",
    )
