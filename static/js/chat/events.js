// What each event from the server does to the page. A snapshot (on every
// (re)connect and on "sync") replaces what is shown; the others update one message.
import { constants } from "./constants.js";
import { attachments } from "./documents.js";
import { fillSettings } from "./settings.js";
import { connect, isReconnect, sync } from "./socket.js";
import { activeReply, forgetSent, messages, pending, upsert } from "./store.js";
import { refreshControls, render, renderNow, renderSoon, showBranchAt, withScroll } from "./render.js";
import { addDelta, catchUp, forgetAhead, keepShown } from "./resume.js";
import { announce, chat, input, list, showBanner, title } from "./ui.js";

const handlers = {
  snapshot(event) {
    const shown = new Map([...messages.values()].map((m) => [m.id, m.content]));
    messages.clear();
    list.replaceChildren();
    title.textContent = event.conversation.title || gettext("New conversation");
    fillSettings(event.conversation);
    const attached = event.documents || event.conversation.documents;
    if (attachments && Array.isArray(attached)) attachments.setAttached(attached);
    for (const payload of event.messages) {
      const message = upsert(payload);
      keepShown(message, shown.get(message.id));
      message.toolSteps = (event.tool_steps || {})[message.id] || [];
      if (message.status === "streaming") catchUp(message);  // deltas that came before this text
      render(message);
    }
    if (!event.messages.length) {
      const empty = document.createElement("li");
      empty.id = "empty-chat";
      empty.className = "muted empty-chat";
      empty.textContent = gettext("Ask anything. Replies are generated on this machine.");
      list.append(empty);
    }
    list.scrollTop = list.scrollHeight;
    // Sent just before the connection dropped: stored, or back in the box.
    if (pending.text !== null && isReconnect()) {
      const mine = event.messages.filter((m) => m.role === "user");
      const stored = mine.length && mine[mine.length - 1].content === pending.text.trim();
      if (!stored && !input.value) input.value = pending.text;
      forgetSent();  // its documents: stored, the snapshot lists them as attached; if not, they are still pending
    }
  },
  "message.created"(event) {
    const parentId = event.message.parent_id ?? null;
    if (!messages.has(event.message.id) && !showBranchAt(parentId)) {
      sync();
      return;
    }
    const message = upsert(event.message);
    withScroll(() => render(message));
    if (message.role === "user" && pending.documents.length) attachments.sent(pending.documents);
    if (message.role === "user") forgetSent();
    if (message.role === "user" && title.textContent === gettext("New conversation")) {
      title.textContent = message.content.split(/\s+/).join(" ").slice(0, constants.titleLength);
      const link = document.querySelector(`.conversation-item[data-id="${chat.dataset.conversationId}"] .conversation-link`);
      if (link) link.textContent = title.textContent;
    }
    if (message.role === "assistant") announce(gettext("SanjAI is replying."));
  },
  "reply.waiting"(event) {
    const message = messages.get(event.message_id);
    if (!message) return;
    message.waiting = event.documents;
    renderSoon(message);
  },
  "reply.tools"(event) {
    // Its calls, each step's state; a reply that called tools waits for them.
    const message = messages.get(event.message_id);
    if (!message) return;
    message.toolSteps = event.steps;
    if (event.steps.some((step) => !["done", "error", "refused"].includes(step.status)) && message.status !== "tool_wait") {
      // The pass that streamed the calls' text is over: the next one starts its text afresh.
      forgetAhead(message.id);
      message.content = "";
      message.status = "tool_wait";
    }
    if (event.waiting) announce(gettext("A tool call waits for your approval."));
    renderSoon(message);
  },
  "document.progress"(event) {
    if (attachments) attachments.progress(event);
    const reply = activeReply();
    const waiting = reply && reply.waiting && reply.waiting.find((doc) => doc.id === event.document_id);
    if (waiting) {
      waiting.progress = event.progress;
      if (event.status !== "processing") reply.waiting = reply.waiting.filter((doc) => doc !== waiting);
    }
    if (reply && reply.status === "pending") renderSoon(reply);
  },
  "message.queued"(event) {
    const message = messages.get(event.message_id);
    if (!message) return;
    message.waiting = null;
    message.position = event.position;
    renderSoon(message);
  },
  "message.started"(event) {
    const message = messages.get(event.message_id);
    if (!message) return;
    message.status = "streaming";
    message.position = null;
    message.waiting = null;
    renderSoon(message);
  },
  "message.delta"(event) {
    const message = messages.get(event.message_id);
    if (!message) return;
    // A snapshot may already hold part of this delta (keep only what is new), or
    // not yet reach it (after a reconnect): resume.js keeps it until one does.
    addDelta(message, event.offset, event.text);
    message.status = "streaming";
    message.position = null;
    renderSoon(message);
  },
  "message.done"(event) { finish(event, "done", gettext("Reply finished.")); },
  "message.cancelled"(event) { finish(event, "cancelled", gettext("Reply stopped.")); },
  "message.failed"(event) {
    finish(event, "failed", gettext("The reply failed."));
    if (event.code === "worker_unavailable" || event.code === "model_loading") {
      showBanner(interpolate(gettext("%(error)s Your message is saved: once a worker runs, use Regenerate."), { error: event.error }, true));
    }
  },
  "branch.switched"() {
    // Another branch is shown now (switched here or in another tab): ask for it.
    sync();
  },
  error(event) {
    if (event.action === "send" && pending.text !== null && !input.value) input.value = pending.text;
    forgetSent();  // refused: its documents stay in the composer, pending
    showBanner(event.error, "info");
  },
};

// Open the conversation's socket (chat.dataset.wsPath), its events handled here.
export function listen() {
  connect({
    onEvent(event) {
      const handler = handlers[event.type];
      if (handler) handler(event);
    },
    onChange: refreshControls,
  });
}

function finish(event, status, spoken) {
  const message = messages.get(event.message_id);
  if (!message) return;
  forgetAhead(message.id);
  message.status = status;
  if (event.content || status === "done") message.content = event.content;
  message.error = event.error;
  message.usage = event.usage;
  message.timing = event.timing;
  message.position = null;
  message.waiting = null;
  if (Array.isArray(event.citations)) {
    message.citations = event.citations;
  } else if (status === "done" && attachments && attachments.hasAttached()) {
    // An event without the reply's sources: the snapshot has them.
    sync();
  }
  renderNow(message);
  announce(status === "done" ? `${spoken} ${message.content}` : spoken);
}
