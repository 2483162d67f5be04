"""The audit log: who opened or exported whose conversation in the admin (chat.models.AuditEntry).

Only other people's conversations are recorded: an operator reading their own
is no one else's business. Entries are only ever added here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest

from chat.auth import client_ip
from chat.models import AuditEntry, Conversation


def _ip(request: HttpRequest) -> str | None:
    try:
        return str(ipaddress.ip_address(client_ip(request) or ""))
    except ValueError:
        return None  # not an address (a misconfigured proxy): kept empty rather than refused


def audit_record(
    *, request: HttpRequest, conversations: Iterable[Conversation], action: AuditEntry.Action
) -> list[AuditEntry]:
    """One entry per conversation that belongs to someone other than the request's user.

    The conversations need their owner loaded (select_related) to avoid a query each.
    """
    actor: AbstractBaseUser | AnonymousUser = request.user
    seen: set[int] = set()
    entries = []
    for conversation in conversations:
        if conversation.owner_id == actor.pk or conversation.pk in seen:
            continue
        seen.add(conversation.pk)
        entries.append(
            AuditEntry(
                actor_id=actor.pk,
                actor_username=actor.get_username(),
                owner_id=conversation.owner_id,
                owner_username=conversation.owner.get_username(),
                action=action,
                conversation_id=conversation.pk,
                path=request.get_full_path()[:300],
                ip=_ip(request),
            )
        )
    return AuditEntry.objects.bulk_create(entries)
