"""Memory: short facts a user chooses to keep ("I write Python; answer with code first").

They are added to the system prompt of the user's replies, within
MEMORY_PROMPT_CHARS (selectors.memory_block: the newest facts first), in
every conversation that uses memory (Conversation.use_memory, on by default,
switched off per conversation in its settings). A fact is only ever saved by
the user: the page suggests one from a message, and saves it on a click.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from chat import selectors
from chat.models import MemoryFact
from chat.services.limits import InvalidInput, lock_profile

MAX_FACT_CHARS: int = MemoryFact._meta.get_field("text").max_length  # type: ignore[assignment]


def memory_add(*, user: User, text: str) -> MemoryFact:
    """Keep a fact; InvalidInput says why not (blank, too long, already kept, the list full)."""
    text = " ".join(text.split())
    if not 1 <= len(text) <= MAX_FACT_CHARS:
        raise InvalidInput("text", f"must be 1 to {MAX_FACT_CHARS} characters, got {len(text)}.")
    with transaction.atomic():
        lock_profile(user=user)  # two keeps at once: one after the other, each seeing the other's
        return _add(user, text)


def _add(user: User, text: str) -> MemoryFact:
    facts = MemoryFact.objects.filter(owner=user)
    if facts.filter(text__iexact=text).exists():
        raise InvalidInput("text", "is in your memory already.")
    if facts.count() >= settings.MEMORY_MAX_FACTS:
        raise InvalidInput(
            "text",
            f"your memory holds {settings.MEMORY_MAX_FACTS} facts, the most it keeps; delete one first.",
        )
    return MemoryFact.objects.create(owner=user, text=text)


def memory_delete(*, user: User, fact_id: int) -> None:
    """Forget one of your facts; MemoryFact.DoesNotExist for anyone else's."""
    selectors.memory_fact(user=user, fact_id=fact_id).delete()
