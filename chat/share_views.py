"""Share by link (chat/services/sharing.py): the public page, and the owner's controls.

The public page needs no login and shows only the snapshot: no owner name
unless the owner chose it, `noindex` for search engines, no Referer sent on
(the token is the page's only secret), and never cached, so a revoked link
is gone at once.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from chat import selectors
from chat.auth import AuthenticatedHttpRequest
from chat.exports import InvalidImport
from chat.models import Conversation, Share
from chat.services import sharing


def share_url(request: HttpRequest, share: Share) -> str:
    return request.build_absolute_uri(reverse("shared", kwargs={"token": share.token}))


def owner_name(user: User) -> str:
    profile = getattr(user, "profile", None)
    return (profile.display_name if profile is not None else "") or user.get_username()


@require_safe
def shared(request: HttpRequest, token: str) -> HttpResponse:
    try:
        share = selectors.share_get(token=token)
    except Share.DoesNotExist:
        raise Http404("No conversation is shared at this address (any more).") from None
    context = {
        "share": share,
        "turns": share.messages,
        "shared_by": owner_name(share.conversation.owner) if share.show_owner else "",
    }
    response = render(request, "chat/shared.html", context)
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def shared_continue(request: AuthenticatedHttpRequest, token: str) -> HttpResponse:
    """A copy of the shared messages as a conversation of the viewer's own, opened."""
    try:
        conversation = sharing.share_continue(user=request.user, token=token)
    except Share.DoesNotExist:
        raise Http404("No conversation is shared at this address (any more).") from None
    except InvalidImport as exc:  # a shared message longer than this site's limit for new ones
        return HttpResponse(f"This conversation cannot be continued here: {exc}", status=400)
    return redirect("conversation", conversation_id=conversation.pk)


@login_required
@require_http_methods(["POST", "DELETE"])
def conversation_share(request: AuthenticatedHttpRequest, conversation_id: int) -> JsonResponse:
    """POST: share the branch shown (or update the share), {"url": ...}; DELETE: stop sharing."""
    try:
        if request.method == "DELETE":
            sharing.share_revoke(user=request.user, conversation_id=conversation_id)
            return JsonResponse({"shared": False})
        share = sharing.share_save(
            user=request.user,
            conversation_id=conversation_id,
            show_owner=request.POST.get("show_owner") in ("1", "true", "on"),
        )
    except Conversation.DoesNotExist:
        raise Http404("No such conversation.") from None
    except sharing.SharingOff as exc:
        return JsonResponse({"error": str(exc)}, status=403)
    except sharing.NothingToShare as exc:
        return JsonResponse({"error": str(exc)}, status=409)
    return JsonResponse({"shared": True, "url": share_url(request, share), "show_owner": share.show_owner})
