from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

MAX_ID = 2**63 - 1  # the database's largest id: bigger numbers are refused, not overflowed


class Preset(models.Model):
    """An assistant: a named bundle of system prompt, model and parameters a new chat starts from.

    Each user keeps their own; an admin may publish one to everybody. Programs
    use one on /v1 as the model id `preset:<slug>`.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="presets")
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100)  # unique per owner; a published one's among the published
    description = models.CharField(max_length=300, blank=True)
    system_prompt = models.TextField(blank=True)
    model = models.CharField(max_length=100, blank=True)  # a declared model; empty: the default one
    params = models.JSONField(default=dict, blank=True)  # the chat page's parameters (chat.params)
    published = models.BooleanField(default=False, help_text="Offered to every user (an admin's choice).")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "slug"], name="preset_slug_per_owner"),
            models.UniqueConstraint(
                fields=["slug"], condition=models.Q(published=True), name="preset_published_slug"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Folder(models.Model):
    """A user's folder of conversations in the sidebar (chat/services/folders.py).

    A new chat started in it starts from its preset, if it has one. Deleting a
    folder keeps its conversations: they go back to the main list.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="folders")
    name = models.CharField(max_length=100)  # unique per owner, whatever the case
    preset = models.ForeignKey(
        Preset, null=True, blank=True, on_delete=models.SET_NULL, related_name="folders"
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = [Lower("name"), "id"]
        constraints = [
            models.UniqueConstraint(Lower("name"), "owner", name="folder_name_per_owner"),
        ]

    def __str__(self) -> str:
        return self.name


class Conversation(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True)
    # Generation parameters chosen for this conversation; unset ones come from
    # the owner's profile, then from the settings.
    params = models.JSONField(default=dict, blank=True)
    # The declared model (settings.MODEL_REGISTRY) its replies come from; empty: the default one.
    model = models.CharField(max_length=100, blank=True)
    # Whether its replies see the owner's memory (chat/services/memory.py).
    use_memory = models.BooleanField(default=True)
    # The preset it started from (its prompt, model and parameters were copied then).
    preset = models.ForeignKey(
        Preset, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations"
    )
    # The sidebar folder it is filed in; empty: the main list.
    folder = models.ForeignKey(
        Folder, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations"
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    # Set: shown on top of the sidebar, most recently pinned first.
    pinned_at = models.DateTimeField(null=True, blank=True)
    # Set: left out of the sidebar's main list, shown in its "Archived" view.
    archived_at = models.DateTimeField(null=True, blank=True)
    # The last message of the branch being viewed (messages form a tree, see
    # Message.parent): the page shows its ancestors, and the next message
    # continues from it. Empty: the newest message.
    current_leaf = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The owner's documents its replies search (chat.documents.search) and cite.
    documents: models.ManyToManyField[Document, Any] = models.ManyToManyField(
        "Document", blank=True, related_name="conversations"
    )
    # The MCP servers whose tools its replies may call (chat/tools/); none: no tools.
    mcp_servers: models.ManyToManyField[McpServer, Any] = models.ManyToManyField(
        "McpServer", blank=True, related_name="conversations"
    )

    class Meta:
        indexes = [models.Index(fields=["owner", "-updated"], name="conversation_owner_recent")]
        ordering = ["-updated"]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        PENDING = "pending"
        STREAMING = "streaming"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"
        # Paused on the tools it called (chat/lifecycle/tools.py): continues, pending again,
        # once each of its steps has a result, an error or a refusal.
        TOOL_WAIT = "tool_wait"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    # The message this one follows; None for a first message. Regenerating a
    # reply or editing a question adds a sibling (a new child of the same
    # parent) instead of replacing anything, so every version is kept.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DONE)
    # For assistant messages: the parameters the reply was generated with.
    params = models.JSONField(default=dict, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=16, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    # The worker process that claimed the reply (its heartbeat id): a streaming
    # reply whose worker has no live heartbeat is failed by the sweeper.
    worker = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200, blank=True)  # the model that wrote the reply
    started_at = models.DateTimeField(null=True, blank=True)  # when a worker claimed it
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=32, blank=True)
    error = models.TextField(blank=True)  # readable reason, shown to the user
    # For assistant replies: the passages of the conversation's documents its
    # prompt was given, each with its marker and whether the reply cites it
    # (chat.documents.retrieval.Citation). Kept when it cites none, so a
    # reviewer can tell "retrieval missed" from "the model ignored it".
    citations = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["created", "id"]
        indexes = [
            models.Index(fields=["conversation", "created"], name="message_conversation_time"),
            # The sweeper's and the limits' look-ups of unfinished replies.
            models.Index(fields=["status", "created"], name="message_status_time"),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.DONE, self.Status.FAILED, self.Status.CANCELLED}


class Profile(models.Model):
    class Theme(models.TextChoices):
        SYSTEM = "system", "System"
        LIGHT = "light", "Light"
        DARK = "dark", "Dark"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    display_name = models.CharField(max_length=100, blank=True)
    default_system_prompt = models.TextField(blank=True)
    default_params = models.JSONField(default=dict, blank=True)  # for new conversations
    # The pages' colours; "system" follows the browser's light or dark setting.
    theme = models.CharField(max_length=8, choices=Theme.choices, default=Theme.SYSTEM)
    # The interface's language (settings.LANGUAGES); empty: the browser's (chat/i18n.py).
    language = models.CharField(max_length=8, blank=True, default="")
    # The conversation `POST /chat` continues when a caller names none.
    current_conversation = models.ForeignKey(
        Conversation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The requests-per-minute limit, as a token bucket: replies the user may
    # still start now (null: a full bucket), as of `rate_checked_at`.
    rate_allowance = models.FloatField(null=True, blank=True)
    rate_checked_at = models.DateTimeField(null=True, blank=True)
    # Token budgets (prompt + completion tokens of the user's replies), set by
    # an admin. Empty: the site's QUOTA_DAILY_TOKENS / QUOTA_MONTHLY_TOKENS; 0: no limit.
    daily_token_limit = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Empty: the site default. 0: no limit."
    )
    monthly_token_limit = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Empty: the site default. 0: no limit."
    )

    def __str__(self) -> str:
        return self.display_name or str(self.user)


class ApiKey(models.Model):
    """A per-user key for programs. Only a SHA-256 hash of the secret is stored.

    SHA-256 rather than a slow password hash: the secret is 256 random bits, so
    there is nothing to brute-force, and every API request must check it fast.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)  # shown in lists, used for lookup
    hashed_secret = models.CharField(max_length=64)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class Usage(models.Model):
    """Tokens one user's replies used on one day with one model: the ledger behind
    quotas, the usage page and the admin's report.

    Kept apart from the messages so that deleting a conversation gives no
    budget back; deleting the account deletes it too.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage")
    day = models.DateField()  # in settings.TIME_ZONE
    model = models.CharField(max_length=200)
    replies = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "usage"
        ordering = ["-day", "user", "model"]
        constraints = [
            models.UniqueConstraint(fields=["user", "day", "model"], name="usage_one_row_per_user_day_model")
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.day} {self.model}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def new_invite_code() -> str:
    return secrets.token_urlsafe(24)


def invite_expiry() -> datetime:
    return timezone.now() + timedelta(days=settings.INVITE_VALID_DAYS)


class Invite(models.Model):
    """A one-use sign-up link for SIGNUP=invite, made in the admin."""

    code = models.CharField(max_length=64, unique=True, editable=False, default=new_invite_code)
    note = models.CharField(max_length=200, blank=True, help_text="Who it is for, for your own records.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(default=invite_expiry)
    used_by = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="invite"
    )
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.note or f"Invite {self.code[:8]}…"


class Feedback(models.Model):
    """The owner's thumbs up or down on a reply, with an optional comment; it can be changed.

    The admin's review queue starts from these (chat/admin.py).
    """

    class Rating(models.IntegerChoices):
        UP = 1, "up"
        DOWN = -1, "down"

    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="feedback")
    rating = models.SmallIntegerField(choices=Rating.choices)
    comment = models.TextField(blank=True, max_length=2000)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "feedback"
        ordering = ["-updated"]
        indexes = [models.Index(fields=["rating", "-updated"], name="feedback_rating_recent")]

    def __str__(self) -> str:
        return f"{self.get_rating_display()} on reply {self.message_id}"


class Share(models.Model):
    """A read-only snapshot of a conversation's branch, public at /s/<token>/ (chat/services/sharing.py)."""

    conversation = models.OneToOneField(Conversation, on_delete=models.CASCADE, related_name="share")
    token = models.CharField(max_length=64, unique=True)  # secrets.token_urlsafe(32): 256 bits
    title = models.CharField(max_length=200, blank=True)
    # The branch's finished messages when the share was made or last updated:
    # [{"role": "user" | "assistant", "content": "..."}], oldest first.
    messages = models.JSONField(default=list)
    show_owner = models.BooleanField(default=False)  # the owner's name on the page
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Share of {self.conversation}"


class MemoryFact(models.Model):
    """A short fact a user chose to keep; it joins the system prompt of their replies
    (chat/services/memory.py)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memory")
    text = models.CharField(max_length=500)  # the limit the service, the forms and the page read
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "pk"]

    def __str__(self) -> str:
        return self.text


# The permission that opens other users' conversations in the admin (chat/admin.py).
READ_OTHERS_CONVERSATIONS = "chat.read_others_conversations"


class AuditEntry(models.Model):
    """One view or export of another user's conversation in the admin (chat/services/audit.py).

    Append-only: written once, never changed; the admin offers no add, change or delete.
    Both people are kept by name too, so the entry outlives either account: the
    record of who read whose conversation is the point of the log, and it holds no
    conversation content.
    """

    class Action(models.TextChoices):
        VIEW = "view", "viewed"
        EXPORT = "export", "exported"

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="audit_actions"
    )
    actor_username = models.CharField(max_length=150)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="audit_notices"
    )
    owner_username = models.CharField(max_length=150)
    action = models.CharField(max_length=10, choices=Action.choices)
    # An id, not a foreign key: the entry stays when the conversation is deleted.
    conversation_id = models.BigIntegerField()
    path = models.CharField(max_length=300)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-pk"]
        verbose_name_plural = "audit entries"
        permissions = [("read_others_conversations", "Can read other users' conversations in the admin")]
        indexes = [models.Index(fields=["owner", "-created"])]

    def __str__(self) -> str:
        action = self.get_action_display()
        return f"{self.actor_username} {action} #{self.conversation_id} of {self.owner_username}"

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None:
            raise ValueError("Audit entries are append-only: an entry is never changed.")
        super().save(*args, **kwargs)


class GroupPolicy(models.Model):
    """What a Django group's members may use: models, token budgets, concurrent replies.

    A user in several groups gets the most generous of them (chat.services.policies).
    """

    group = models.OneToOneField("auth.Group", on_delete=models.CASCADE, related_name="policy")
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text='Declared models the members may use, e.g. ["small", "large"]; []: every model.',
    )
    daily_token_limit = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Tokens a member may use a day; empty: QUOTA_DAILY_TOKENS; 0: no limit.",
    )
    monthly_token_limit = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Tokens a member may use a month; empty: QUOTA_MONTHLY_TOKENS; 0: no limit.",
    )
    max_concurrent_replies = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Replies a member may have running at once; empty: MAX_CONCURRENT_REPLIES; 0: no limit.",
    )

    class Meta:
        verbose_name_plural = "group policies"

    def __str__(self) -> str:
        return f"Policy of {self.group}"


class Document(models.Model):
    """A file a user uploaded to chat with, and where its reading stands.

    The bytes live in `path` under DOCUMENT_DIR; the worker on the "documents"
    queue reads them into `DocumentChunk`s (chat.services.documents.document_ingest).
    """

    class Status(models.TextChoices):
        PROCESSING = "processing"
        READY = "ready"
        FAILED = "failed"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="documents")
    name = models.CharField(max_length=255)  # chat.documents.clean_filename of what was sent
    kind = models.CharField(max_length=20)
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    page_count = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PROCESSING)
    progress = models.PositiveSmallIntegerField(default=0)  # 0-100
    error = models.TextField(blank=True)
    path = models.CharField(max_length=500)  # relative to DOCUMENT_DIR
    created = models.DateTimeField(default=timezone.now)
    # The claim sets both; the sweeper clears `worker` (and restarts the clock)
    # when it queues a stale one again, which it does `requeues` < 1 times.
    ingest_started_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    requeues = models.PositiveSmallIntegerField(default=0)
    indexed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-pk"]
        indexes = [models.Index(fields=["owner", "-created"]), models.Index(fields=["status", "created"])]

    def __str__(self) -> str:
        return self.name


class DocumentChunk(models.Model):
    """A passage of a document, in document order, with the page and heading it came from."""

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    page = models.PositiveIntegerField(null=True, blank=True)
    heading = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["document", "ordinal"]
        constraints = [models.UniqueConstraint(fields=["document", "ordinal"], name="document_chunk_ordinal")]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"


class ChunkVector(models.Model):
    """A chunk's embedding for dense search (chat.documents.dense), deleted with its chunk.

    Unit-length float32, little-endian: the blob sqlite-vec's functions read as
    a vector. `model` names the embedder that made it: vectors of another
    embedder are never compared with a query's.
    """

    chunk = models.OneToOneField(
        DocumentChunk, on_delete=models.CASCADE, primary_key=True, related_name="vector"
    )
    # The chunk's document again, so a search filters vectors without reading chunks.
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="+")
    model = models.CharField(max_length=500)
    embedding = models.BinaryField()

    class Meta:
        indexes = [models.Index(fields=["document", "model"], name="chunk_vector_document")]

    def __str__(self) -> str:
        return f"vector of {self.chunk_id}"


class OidcIdentity(models.Model):
    """The account a single sign-on identity logs into (chat/sso.py).

    Linked by the provider's stable (issuer, subject) pair, never by email: an
    address can change hands at the provider, a subject does not.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oidc_identity"
    )
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="oidc_identity_unique_subject")
        ]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"


# An environment variable's name, as a shell writes one.
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class McpServer(models.Model):
    """An MCP server an admin declared (chat/tools/): a command run over stdio, or a
    streamable-HTTP URL. Secrets stay in the environment: only the names of the
    variables a command is given, and of the one holding the URL's key, are stored.
    """

    class Transport(models.TextChoices):
        STDIO = "stdio", "stdio command"
        HTTP = "http", "streamable HTTP"

    name = models.SlugField(max_length=64, unique=True, help_text="Shown to users; letters, digits, - and _.")
    description = models.CharField(max_length=300, blank=True)
    transport = models.CharField(max_length=8, choices=Transport.choices, default=Transport.STDIO)
    command = models.CharField(max_length=500, blank=True, help_text="stdio: the program to run.")
    args = models.JSONField(default=list, blank=True, help_text='stdio: its arguments, e.g. ["-m", "x"].')
    env_names = models.JSONField(
        default=list,
        blank=True,
        help_text='stdio: names of environment variables passed on, e.g. ["TZ"]; never their values.',
    )
    url = models.URLField(max_length=500, blank=True, help_text="HTTP: the server's endpoint, e.g. …/mcp.")
    key_env = models.CharField(
        max_length=100,
        blank=True,
        help_text="HTTP: the environment variable holding its key (sent as a bearer token); empty: none.",
    )
    enabled = models.BooleanField(default=True)
    default_approval = models.CharField(
        max_length=4,
        choices=[("ask", "ask the user first"), ("auto", "run automatically")],
        default="ask",
        help_text="What a tool found on it starts as; each tool can be changed below.",
    )
    # The last tools/list: when, and why it failed (empty: it answered).
    tools_listed_at = models.DateTimeField(null=True, blank=True)
    list_error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "MCP server"

    def __str__(self) -> str:
        return self.name


class McpTool(models.Model):
    """A tool a server listed (tools/list, kept MCP_TOOLS_CACHE_S), and whether its calls
    need the user's approval."""

    class Approval(models.TextChoices):
        ASK = "ask", "ask the user first"
        AUTO = "auto", "run automatically"

    server = models.ForeignKey(McpServer, on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    input_schema = models.JSONField(default=dict, blank=True)
    approval = models.CharField(max_length=4, choices=Approval.choices, default=Approval.ASK)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["server", "name"]
        verbose_name = "MCP tool"
        constraints = [models.UniqueConstraint(fields=["server", "name"], name="mcp_tool_name_per_server")]

    def __str__(self) -> str:
        return f"{self.server_id}:{self.name}"


class ToolStep(models.Model):
    """One tool call a reply made: a part of the reply, with its arguments, approval,
    result or error, and times (chat/tools/services.py writes its status)."""

    class Status(models.TextChoices):
        AWAITING_APPROVAL = "awaiting_approval"
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"  # the tool answered (its own error reports included: `is_error`)
        ERROR = "error"  # no answer: the server was down, slow or hostile, or a limit was reached
        REFUSED = "refused"  # by the user, or nobody approved it in time

    reply = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="tool_steps")
    round = models.PositiveSmallIntegerField()  # the generation pass that made the call, from 1
    ordinal = models.PositiveSmallIntegerField()  # the step's place in the reply, from 1
    preface = models.TextField(blank=True)  # what the model wrote before its calls in that pass
    server = models.ForeignKey(McpServer, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    server_name = models.CharField(max_length=64)  # kept when the server is deleted
    tool = models.CharField(max_length=200)  # the tool's name on its server
    called_as = models.CharField(max_length=270)  # the name the model called it by
    arguments = models.JSONField(default=dict, blank=True)
    approval = models.CharField(max_length=4, choices=McpTool.Approval.choices)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices)
    result = models.TextField(blank=True)  # what went back into the prompt
    is_error = models.BooleanField(default=False)
    truncated = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["reply", "ordinal"]
        constraints = [models.UniqueConstraint(fields=["reply", "ordinal"], name="tool_step_ordinal")]
        indexes = [models.Index(fields=["status", "created"], name="tool_step_status_time")]

    def __str__(self) -> str:
        return f"{self.called_as} in reply {self.reply_id}"

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.DONE, self.Status.ERROR, self.Status.REFUSED}

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return int((self.finished_at - self.started_at).total_seconds() * 1000)
