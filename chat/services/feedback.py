"""Feedback on replies: the owner's thumbs up or down, with an optional comment.

One per reply; setting it again changes it, clearing it removes it. The admin's
review queue (chat/admin.py FeedbackAdmin) starts from these.
"""

from __future__ import annotations

from django.contrib.auth.models import User

from chat import selectors
from chat.models import Feedback, Message
from chat.services.limits import InvalidInput

COMMENT_CHARS = Feedback._meta.get_field("comment").max_length or 2000
RATINGS: dict[object, int] = {
    "up": Feedback.Rating.UP,
    "down": Feedback.Rating.DOWN,
    1: Feedback.Rating.UP,
    -1: Feedback.Rating.DOWN,
}


def feedback_set(*, user: User, message_id: int, rating: object, comment: str = "") -> Feedback:
    """Rate one of the user's finished replies. Message.DoesNotExist for anyone else's;
    InvalidInput for a rating other than up/down (or 1/-1), a long comment, or a
    message that is not a finished reply."""
    message = selectors.message_get(user=user, message_id=message_id)
    if message.role != Message.Role.ASSISTANT or not message.is_finished:
        raise InvalidInput("message", "only a finished reply can be rated.")
    if isinstance(rating, bool) or rating not in RATINGS:
        raise InvalidInput("rating", f'must be "up" or "down" (or 1 or -1), got {rating!r}.')
    comment = comment.strip()
    if len(comment) > COMMENT_CHARS:
        raise InvalidInput("comment", f"must be at most {COMMENT_CHARS} characters, got {len(comment)}.")
    feedback, _ = Feedback.objects.update_or_create(
        message=message, defaults={"rating": RATINGS[rating], "comment": comment}
    )
    return feedback


def feedback_clear(*, user: User, message_id: int) -> None:
    """Take the user's rating of a reply back. Message.DoesNotExist for anyone else's."""
    message = selectors.message_get(user=user, message_id=message_id)
    Feedback.objects.filter(message=message).delete()
