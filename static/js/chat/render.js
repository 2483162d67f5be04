// Messages into the page: each message's bubble (Markdown for replies, the
// waiting and usage lines), rendered at most once a frame while a reply streams,
// and the controls that depend on whether a reply is being written.
import { actionsFor } from "./actions.js";
import { attachments, citations } from "./documents.js";
import { isOpen } from "./socket.js";
import { activeReply, messages, pending } from "./store.js";
import { toolBlocksFor, toolWaitText } from "./tools.js";
import { chat, copyText, list, number, sendButton, stopButton } from "./ui.js";

let renderQueued = new Set();

// Markdown, sanitized, with code and math: static/js/markdown.js.
export function renderMarkdownInto(target, text, settled) {
  window.SanjaiMarkdown.renderInto(target, text, settled, copyText);
}

// Replies rendered by the server arrive as plain text: show them as
// Markdown at once, before the socket's snapshot replaces them.
export function renderServerReplies() {
  for (const content of list.querySelectorAll(".bubble.assistant .content")) {
    renderMarkdownInto(content, content.textContent, false);
  }
}

function nearBottom() {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

export function withScroll(update) {
  const follow = nearBottom();
  update();
  if (follow) list.scrollTop = list.scrollHeight;
}

function bubbleFor(message) {
  if (message.el) return message.el;
  const el = document.createElement("li");
  el.className = `bubble ${message.role}`;
  el.dataset.id = message.id;
  el.dataset.role = message.role;
  const content = document.createElement("div");
  content.className = "content";
  el.append(content);
  message.el = el;
  const empty = document.getElementById("empty-chat");
  if (empty) empty.remove();
  list.append(el);
  return el;
}

export function render(message) {
  const el = bubbleFor(message);
  el.className = `bubble ${message.role} ${message.status}`;
  el.dataset.status = message.status;
  el.setAttribute("aria-busy", String(["pending", "streaming", "tool_wait"].includes(message.status)));
  el.replaceChildren();
  const content = document.createElement("div");
  content.className = "content";
  if (message.role === "assistant") {
    const settled = !["pending", "streaming", "tool_wait"].includes(message.status);
    renderMarkdownInto(content, message.content || "", settled);
    if (settled && citations) citations.linkMarkers(content, message);
    if ((message.status === "pending" || message.status === "streaming") && !message.content) {
      content.append(typingIndicator(message.position, message.status === "pending" ? pending.modelLoading : "", indexingText(message)));
    }
  } else {
    content.textContent = message.content;
  }
  const tools = message.role === "assistant" && toolBlocksFor(message);
  if (tools) el.append(tools);  // the calls came before the answer
  if (message.status === "tool_wait") content.append(typingIndicator(null, "", "", toolWaitText(message)));
  el.append(content);
  if (message.status === "failed") {
    const error = document.createElement("div");
    error.className = "error-text";
    error.textContent = message.error || gettext("The reply failed.");
    el.append(error);
  } else if (message.status === "cancelled") {
    const note = document.createElement("div");
    note.className = "meta";
    note.textContent = gettext("Stopped.");
    el.append(note);
  }
  const sources = citations && message.status !== "pending" && message.status !== "streaming" && citations.chipsFor(message);
  if (sources) el.append(sources);
  const usage = usageLine(message);
  if (usage) el.append(usage);
  el.append(actionsFor(message, render));
}

// A reply that waits for its conversation's documents to be read says so:
// "indexing report.pdf, 40%" (reply.waiting; after a reload, the chips' own state).
function indexingText(message) {
  if (message.status !== "pending" || message.position) return "";
  const waiting = message.waiting || (attachments ? attachments.processing() : []);
  return waiting.map((doc) => interpolate(gettext("indexing %(name)s, %(progress)s%"), { name: doc.name, progress: doc.progress || 0 }, true)).join("; ");
}

// Tokens, speed and time to first token, as the server stored them.
function usageLine(message) {
  if (message.role !== "assistant" || !["done", "cancelled"].includes(message.status)) return null;
  const usage = message.usage || {};
  const timing = message.timing || {};
  if (!usage.prompt_tokens && !usage.completion_tokens) return null;
  const parts = [interpolate(gettext("%(prompt)s prompt + %(completion)s completion tokens"), {
    prompt: number(usage.prompt_tokens), completion: number(usage.completion_tokens),
  }, true)];
  if (timing.tokens_per_second != null) {
    parts.push(interpolate(gettext("%(speed)s tokens/s"), { speed: number(timing.tokens_per_second, 1) }, true));
  }
  if (timing.time_to_first_token_s != null) {
    parts.push(interpolate(gettext("%(seconds)s s to first token"), { seconds: number(timing.time_to_first_token_s, 2) }, true));
  }
  const line = document.createElement("div");
  line.className = "meta usage";
  line.textContent = parts.join(" · ");
  line.title = gettext("Speed counts from the first token to the last; the wait runs from queueing to the first token.");
  return line;
}

function typingIndicator(position, loading, indexing, tools = "") {
  const wrap = document.createElement("span");
  wrap.className = "typing";
  const waiting = tools || (indexing ? interpolate(gettext("%(what)s: the reply starts once it is read"), { what: indexing }, true) :
    loading ? interpolate(gettext("%(what)s: the reply starts once it is ready"), { what: loading }, true) :
    position ? interpolate(gettext("queued (#%(position)s)"), { position }, true) : "");
  wrap.setAttribute("aria-label", waiting || gettext("SanjAI is typing"));
  for (let i = 0; i < 3; i++) wrap.append(document.createElement("span"));
  if (waiting) {
    const text = document.createElement("small");
    text.className = "muted waiting";
    text.textContent = ` ${waiting}`;
    wrap.append(text);
  }
  return wrap;
}

// A new message follows `parentId`: what the page showed after that message
// is another branch now, and leaves the page. False if the parent is not
// shown (this page shows another branch): the caller asks for the conversation again.
export function showBranchAt(parentId) {
  if (parentId !== null && !messages.has(parentId)) return false;
  let after = parentId === null; // a first message: nothing shown stays
  for (const [id, m] of [...messages]) {
    if (after) {
      if (m.el) m.el.remove();
      renderQueued.delete(m);
      messages.delete(id);
    } else if (id === parentId) {
      after = true;
    }
  }
  return true;
}

export function renderSoon(message) {
  // Deltas can arrive faster than the screen refreshes: render once a frame.
  renderQueued.add(message);
  if (renderQueued.size === 1) {
    requestAnimationFrame(() => {
      const batch = renderQueued;
      renderQueued = new Set();
      withScroll(() => batch.forEach((m) => messages.has(m.id) && render(m)));
    });
  }
}

// At once, not at the next frame (a reply that settled): a queued render would only repeat it.
export function renderNow(message) {
  renderQueued.delete(message);
  withScroll(() => render(message));
}

export function refreshControls() {
  const busy = activeReply() !== null;
  const ready = chat.dataset.conversationId ? isOpen() : !pending.starting;
  sendButton.disabled = busy || !ready;
  stopButton.hidden = !busy;
  for (const m of messages.values()) {
    if (m.el) m.el.querySelector(".actions")?.replaceWith(actionsFor(m, render));
  }
}
