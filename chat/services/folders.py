"""Folders of conversations: make, rename, delete, and move conversations in and out.

A folder is the user's own (nobody else sees or touches it: another's id is
Folder.DoesNotExist, which every surface answers as 404). Deleting one keeps its
conversations: `Conversation.folder` is SET_NULL, so they go back to the main list.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from chat import selectors
from chat.models import Conversation, Folder, Preset
from chat.services.limits import InvalidInput

MAX_FOLDERS = 200  # per user: a sidebar people scan, not a filing system
NAME_CHARS = 100


def _name(name: str) -> str:
    name = " ".join(name.split())
    if not 1 <= len(name) <= NAME_CHARS:
        raise InvalidInput("name", f"must be 1 to {NAME_CHARS} characters (spaces at the ends do not count).")
    return name


def _taken(user: User, name: str, exclude: int | None = None) -> bool:
    mine = Folder.objects.filter(owner=user, name__iexact=name)
    return (mine.exclude(pk=exclude) if exclude is not None else mine).exists()


def _check_free(user: User, name: str, exclude: int | None = None) -> None:
    if _taken(user, name, exclude):
        raise InvalidInput("name", f"you already have a folder named “{name}” (names ignore case).")


def _preset(user: User, preset_id: int | None) -> Preset | None:
    """A preset the user may start from; InvalidInput names the field otherwise (not 404:
    the folder is the object addressed, the preset is a value in it)."""
    if preset_id is None:
        return None
    try:
        return selectors.preset_usable(user=user, preset_id=preset_id)
    except Preset.DoesNotExist:
        raise InvalidInput(
            "preset_id", f"{preset_id} is not one of your presets or a published one."
        ) from None


def _save(folder: Folder) -> Folder:
    try:
        with transaction.atomic():
            folder.save()
    except IntegrityError:  # the same name saved by a second request at once
        raise InvalidInput(
            "name", f"you already have a folder named “{folder.name}” (names ignore case)."
        ) from None
    return folder


def folder_create(*, user: User, name: str, preset_id: int | None = None) -> Folder:
    name = _name(name)
    if selectors.folder_list(user=user).count() >= MAX_FOLDERS:
        raise InvalidInput(
            "name", f"you have {MAX_FOLDERS} folders, the most one may keep; delete one first."
        )
    _check_free(user, name)
    return _save(Folder(owner=user, name=name, preset=_preset(user, preset_id)))


def folder_update(
    *,
    user: User,
    folder_id: int,
    name: str | None = None,
    preset_id: int | None = None,
    clear_preset: bool = False,
) -> Folder:
    """Rename a folder or change its preset (`clear_preset`: none); DoesNotExist for others'."""
    folder = selectors.folder_get(user=user, folder_id=folder_id)
    if name is not None:
        folder.name = _name(name)
        _check_free(user, folder.name, exclude=folder.pk)
    if clear_preset:
        folder.preset = None
    elif preset_id is not None:
        folder.preset = _preset(user, preset_id)
    return _save(folder)


def folder_delete(*, user: User, folder_id: int) -> None:
    """Delete a folder; its conversations stay, back in the main list. DoesNotExist for others'."""
    selectors.folder_get(user=user, folder_id=folder_id).delete()


def conversation_move(*, user: User, conversation_id: int, folder_id: int | None) -> Conversation:
    """File a conversation in one of the user's folders, or (None) back in the main list.

    Conversation.DoesNotExist or Folder.DoesNotExist for anyone else's. Not
    activity: `updated` (the sidebar's order) stays as it is.
    """
    conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    folder = selectors.folder_get(user=user, folder_id=folder_id) if folder_id is not None else None
    Conversation.objects.filter(pk=conversation.pk).update(folder=folder)
    conversation.folder = folder
    return conversation


def folder_for_import(*, user: User, name: str) -> Folder | None:
    """The user's folder of this name (whatever the case), made if missing; None if the
    name is not one a folder may have or the user has no room for another."""
    try:
        name = _name(name)
    except InvalidInput:
        return None
    found = Folder.objects.filter(owner=user, name__iexact=name).first()
    if found is not None:
        return found
    try:
        return folder_create(user=user, name=name)
    except InvalidInput:
        return None
