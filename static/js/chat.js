// The chat page: one websocket per open conversation, replies streamed in as
// they are generated. No framework and no build step. Everything shown comes
// from the server (a snapshot on every (re)connect, then events), so a reload
// or a dropped connection never loses anything.
//
// The home page is a new chat with no conversation yet: its first message is
// posted over HTTP, which stores the conversation with it, and the page then
// becomes that conversation's page (its URL, its socket) without a reload.
//
// Words shown go through Django's JavaScript catalog (gettext, interpolate: /jsi18n/,
// templates/base.html); the server's own refusals (answer.error) come as it words them.
"use strict";

(function () {
  const { csrfToken, postJSON } = window.SanjaiHttp;  // static/js/http.js
  const chat = document.getElementById("chat");
  setUpSidebar();
  setUpShortcuts();
  if (!chat) return;

  const list = document.getElementById("messages");
  const input = document.getElementById("input");
  const composer = document.getElementById("composer");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const banner = document.getElementById("banner");
  const announcer = document.getElementById("announcer");
  const title = document.getElementById("chat-title");

  // The socket's close codes and the title's length, as the server defines them.
  const constants = JSON.parse(document.getElementById("page-constants").textContent);
  const messages = new Map(); // id -> {id, role, content, status, error, usage, el}
  let socket = null;
  let retryDelay = 500;
  let closedForGood = false;
  let renderQueued = new Set();
  // Text sent but not yet stored: put back in the box if the server refuses it
  // (too long, too many replies at once), so nothing the user wrote is lost.
  let unsent = null;
  let unsentDocuments = [];  // the documents that went with it, pending until it is stored
  let modelLoading = ""; // "Loading <model> … NN%" while the workers load it; a reply sent now waits for it
  let lastEventAt = Date.now();
  let everOpened = false; // the socket has been open before: a snapshot now follows a reconnect
  let reconnected = false;
  let starting = false; // the home page's first message is on its way

  // Documents: the composer's chips (attachments.js) and a reply's sources (citations.js).
  const attachments = setUpAttachments();
  const citations = window.SanjaiCitations;

  // Markdown, sanitized, with code and math: static/js/markdown.js.
  function renderMarkdownInto(target, text, settled) {
    window.SanjaiMarkdown.renderInto(target, text, settled, copyText);
  }

  // ---- Rendering -------------------------------------------------------------
  function nearBottom() {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  function withScroll(update) {
    const follow = nearBottom();
    update();
    if (follow) list.scrollTop = list.scrollHeight;
  }

  function lastOf(role) {
    let found = null;
    for (const m of messages.values()) if (m.role === role) found = m;
    return found;
  }

  function activeReply() {
    for (const m of messages.values()) {
      if (m.role === "assistant" && (m.status === "pending" || m.status === "streaming")) return m;
    }
    return null;
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

  function render(message) {
    const el = bubbleFor(message);
    el.className = `bubble ${message.role} ${message.status}`;
    el.dataset.status = message.status;
    el.setAttribute("aria-busy", String(message.status === "streaming" || message.status === "pending"));
    el.replaceChildren();
    const content = document.createElement("div");
    content.className = "content";
    if (message.role === "assistant") {
      const settled = !["pending", "streaming"].includes(message.status);
      renderMarkdownInto(content, message.content || "", settled);
      if (settled && citations) citations.linkMarkers(content, message);
      if ((message.status === "pending" || message.status === "streaming") && !message.content) {
        content.append(typingIndicator(message.position, message.status === "pending" ? modelLoading : "", indexingText(message)));
      }
    } else {
      content.textContent = message.content;
    }
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
    el.append(actionsFor(message));
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

  function typingIndicator(position, loading, indexing) {
    const wrap = document.createElement("span");
    wrap.className = "typing";
    const waiting = indexing ? interpolate(gettext("%(what)s: the reply starts once it is read"), { what: indexing }, true) :
      loading ? interpolate(gettext("%(what)s: the reply starts once it is ready"), { what: loading }, true) :
      position ? interpolate(gettext("queued (#%(position)s)"), { position }, true) : "";
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

  // A number as the page's language writes it (1,234.5 or 1.234,5).
  function number(value, digits) {
    const options = digits === undefined ? {} : { minimumFractionDigits: digits, maximumFractionDigits: digits };
    return Number(value).toLocaleString(document.documentElement.lang || undefined, options);
  }

  function button(label, onClick, extra) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", onClick);
    if (extra) b.setAttribute("aria-label", extra);
    return b;
  }

  function actionsFor(message) {
    const actions = document.createElement("div");
    actions.className = "actions";
    const finished = !["pending", "streaming"].includes(message.status);
    const busy = activeReply() !== null;
    const versions = branchNav(message, busy);
    if (versions) actions.append(versions);
    if (message.role === "assistant" && finished && message.content) {
      actions.append(button(gettext("Copy"), () => copyText(message.content, gettext("Reply copied.")), gettext("Copy this reply")));
    }
    if (message.role === "assistant" && finished && message.content) {
      const reading = window.SanjaiVoice && window.SanjaiVoice.readAloudButton(message);
      if (reading) actions.append(reading);
    }
    if (message.role === "assistant" && finished && message.id) actions.append(feedbackFor(message));
    if (!busy && message.role === "assistant" && finished && message === lastOf("assistant")) {
      actions.append(button(gettext("Regenerate"), () => send({ action: "regenerate" }), gettext("Regenerate the last reply")));
    }
    if (!busy && message.role === "user" && message === lastOf("user")) {
      actions.append(button(gettext("Edit"), () => startEdit(message), gettext("Edit your last message and resend")));
    }
    const remember = window.SanjaiMemory && window.SanjaiMemory.rememberButton(message);
    if (remember) actions.append(remember);
    return actions;
  }

  // ---- Feedback: thumbs up or down on a reply, with an optional comment, changeable -----
  function feedbackFor(message) {
    const wrap = document.createElement("span");
    wrap.className = "feedback";
    const current = message.feedback || null;
    for (const [rating, name] of [["up", gettext("Good reply")], ["down", gettext("Bad reply")]]) {
      const chosen = current !== null && current.rating === rating;
      const b = button("", () => rate(message, chosen ? null : rating, current ? current.comment : ""), name);
      b.append(thumb(rating));
      b.title = name;
      b.className = `rate rate-${rating}`;
      b.setAttribute("aria-pressed", String(chosen));
      wrap.append(b);
    }
    if (current) {
      const comment = button(current.comment ? gettext("Edit comment") : gettext("Add a comment"), () => editComment(message));
      comment.className = "rate-comment";
      wrap.append(comment);
    }
    return wrap;
  }

  // A thumb drawn as SVG (Feather's thumbs-up, MIT): no emoji font needed, no inline style.
  function thumb(rating) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    for (const [name, value] of Object.entries({
      viewBox: "0 0 24 24", width: "16", height: "16", fill: "none", stroke: "currentColor",
      "stroke-width": "2", "stroke-linecap": "round", "stroke-linejoin": "round", "aria-hidden": "true",
    })) svg.setAttribute(name, value);
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    if (rating === "down") path.setAttribute("transform", "rotate(180 12 12)");
    path.setAttribute("d", "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3");
    svg.append(path);
    return svg;
  }

  async function rate(message, rating, comment) {
    const url = chat.dataset.feedbackUrl.replace("/0/", `/${message.id}/`);
    const response = await postJSON(url, { rating, comment });
    const answer = await response.json();
    if (!response.ok) {
      showBanner(answer.error || gettext("The rating was not saved."), "info");
      return;
    }
    message.feedback = answer.feedback;
    render(message);
    announce(rating ? gettext("Thanks: your rating was saved.") : gettext("Rating removed."));
  }

  function editComment(message) {
    const form = document.createElement("form");
    form.className = "feedback-comment";
    const area = document.createElement("textarea");
    area.rows = 2;
    area.maxLength = 2000;
    area.value = message.feedback.comment || "";
    area.setAttribute("aria-label", gettext("What was good or bad about this reply?"));
    area.placeholder = gettext("What was good or bad about this reply? (optional)");
    const save = document.createElement("button");
    save.type = "submit";
    save.textContent = gettext("Save comment");
    form.append(area, save);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      rate(message, message.feedback.rating, area.value);
    });
    message.el.querySelector(".actions").after(form);
    area.focus();
  }

  // ---- Branches: "‹ n/m ›" on a message with alternatives (a regenerated reply,
  // an edited question). Switching is stored, so a reload shows the same branch;
  // the server then announces it and every open page asks for the branch again.
  function branchNav(message, busy) {
    const siblings = message.siblings || [];
    if (siblings.length < 2) return null;
    const index = siblings.indexOf(message.id);
    const nav = document.createElement("span");
    nav.className = "branch-nav";
    const reply = message.role === "assistant";
    const go = (to) => () => {
      if (send({ action: "switch", message_id: siblings[to] })) {
        announce(interpolate(gettext("Showing version %(number)s of %(count)s."), { number: to + 1, count: siblings.length }, true));
      }
    };
    const previous = button("‹", go(index - 1), reply ? gettext("Previous version of this reply") : gettext("Previous version of this message"));
    const next = button("›", go(index + 1), reply ? gettext("Next version of this reply") : gettext("Next version of this message"));
    previous.disabled = busy || index <= 0;
    next.disabled = busy || index >= siblings.length - 1;
    const position = document.createElement("span");
    position.className = "branch-position";
    position.textContent = `${index + 1}/${siblings.length}`;
    nav.append(previous, position, next);
    return nav;
  }

  // A new message follows `parentId`: what the page showed after that message
  // is another branch now, and leaves the page. False if the parent is not
  // shown (this page shows another branch): the caller asks for the conversation again.
  function showBranchAt(parentId) {
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

  function renderSoon(message) {
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

  function refreshControls() {
    const busy = activeReply() !== null;
    const ready = chat.dataset.conversationId ? socket && socket.readyState === WebSocket.OPEN : !starting;
    sendButton.disabled = busy || !ready;
    stopButton.hidden = !busy;
    for (const m of messages.values()) {
      if (m.el) m.el.querySelector(".actions")?.replaceWith(actionsFor(m));
    }
  }

  async function copyText(text, spoken, feedbackButton) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const area = document.createElement("textarea");
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    announce(spoken);
    if (feedbackButton) {
      const label = feedbackButton.textContent;
      feedbackButton.textContent = gettext("Copied");
      setTimeout(() => { feedbackButton.textContent = label; }, 1500);
    }
  }

  function startEdit(message) {
    const el = message.el;
    const box = document.createElement("div");
    box.className = "edit-box";
    const area = document.createElement("textarea");
    area.value = message.content;
    area.rows = 3;
    area.setAttribute("aria-label", gettext("Edit your message"));
    const row = document.createElement("div");
    row.className = "actions";
    row.append(
      button(gettext("Save and resend"), () => {
        if (!area.value.trim()) return showBanner(gettext("The message is empty."), "info");
        send({ action: "edit", content: area.value });
      }),
      button(gettext("Cancel"), () => render(message)),
    );
    box.append(area, row);
    el.replaceChildren(box);
    area.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault(); // Esc leaves the edit box; it does not also stop a reply
        render(message);
        input.focus();
      } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        row.querySelector("button").click();
      }
    });
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
  }

  function announce(text) {
    announcer.textContent = "";
    setTimeout(() => { announcer.textContent = text; }, 50);
  }

  function showBanner(text, kind) {
    banner.textContent = text;
    banner.className = `banner ${kind || ""}`;
    banner.hidden = false;
  }

  function hideBanner() {
    banner.hidden = true;
  }

  function setUpAttachments() {
    const list = document.getElementById("attachments");
    if (!window.SanjaiAttachments || !list) return null;
    return window.SanjaiAttachments.setUp({
      list,
      composer,
      fileInput: document.getElementById("attach-input"),
      attachButton: document.getElementById("attach"),
      documentsUrl: composer.dataset.documentsUrl,
      conversationsUrl: composer.dataset.conversationsUrl,
      conversationId: () => chat.dataset.conversationId,
      showBanner,
      announce,
    });
  }

  // ---- Events from the server ------------------------------------------------
  function upsert(payload) {
    const existing = messages.get(payload.id);
    const message = Object.assign(existing || { el: null }, payload);
    messages.set(message.id, message);
    return message;
  }

  const handlers = {
    snapshot(event) {
      messages.clear();
      list.replaceChildren();
      title.textContent = event.conversation.title || gettext("New conversation");
      fillSettings(event.conversation);
      const attached = event.documents || event.conversation.documents;
      if (attachments && Array.isArray(attached)) attachments.setAttached(attached);
      for (const payload of event.messages) render(upsert(payload));
      if (!event.messages.length) {
        const empty = document.createElement("li");
        empty.id = "empty-chat";
        empty.className = "muted empty-chat";
        empty.textContent = gettext("Ask anything. Replies are generated on this machine.");
        list.append(empty);
      }
      list.scrollTop = list.scrollHeight;
      // Sent just before the connection dropped: stored, or back in the box.
      if (unsent !== null && reconnected) {
        const mine = event.messages.filter((m) => m.role === "user");
        const stored = mine.length && mine[mine.length - 1].content === unsent.trim();
        if (!stored && !input.value) input.value = unsent;
        unsent = null;
        unsentDocuments = [];  // stored: the snapshot lists them as attached; if not, they are still pending
      }
    },
    "message.created"(event) {
      const parentId = event.message.parent_id ?? null;
      if (!messages.has(event.message.id) && !showBranchAt(parentId)) {
        socket.send(JSON.stringify({ action: "sync" }));
        return;
      }
      const message = upsert(event.message);
      withScroll(() => render(message));
      if (message.role === "user" && unsentDocuments.length) attachments.sent(unsentDocuments);
      if (message.role === "user") {
        unsent = null;
        unsentDocuments = [];
      }
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
      const have = (message.content || "").length;
      // A snapshot may already hold part of this delta: keep only what is new.
      if (event.offset <= have && event.offset + event.text.length > have) {
        message.content = (message.content || "") + event.text.slice(have - event.offset);
      }
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
      socket.send(JSON.stringify({ action: "sync" }));
    },
    error(event) {
      if (event.action === "send" && unsent !== null && !input.value) input.value = unsent;
      unsent = null;
      unsentDocuments = [];  // refused: they stay in the composer, pending
      showBanner(event.error, "info");
    },
  };

  function finish(event, status, spoken) {
    const message = messages.get(event.message_id);
    if (!message) return;
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
      socket.send(JSON.stringify({ action: "sync" }));
    }
    renderQueued.delete(message);
    withScroll(() => render(message));
    announce(status === "done" ? `${spoken} ${message.content}` : spoken);
  }

  // ---- The socket -------------------------------------------------------------
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${chat.dataset.wsPath}`);
    socket.addEventListener("open", () => {
      reconnected = everOpened;
      everOpened = true;
      retryDelay = 500;
      hideBanner();
      refreshControls();
    });
    socket.addEventListener("message", (message) => {
      lastEventAt = Date.now();
      const event = JSON.parse(message.data);
      const handler = handlers[event.type];
      if (handler) handler(event);
      refreshControls();
    });
    socket.addEventListener("close", (event) => {
      refreshControls();
      if (event.code === constants.closeCodes.unauthenticated) {
        closedForGood = true;
        location.href = `/login/?next=${encodeURIComponent(location.pathname)}`;
      } else if (event.code === constants.closeCodes.notFound) {
        closedForGood = true;
        showBanner(gettext("This conversation does not exist or is not yours."));
      } else if (!closedForGood) {
        showBanner(interpolate(gettext("Connection lost — reconnecting in %(seconds)s s…"), { seconds: number(Math.round(retryDelay / 100) / 10) }, true));
        setTimeout(connect, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 8000);
      }
    });
  }

  // Events are hints; the database is the truth. A reply that has been quiet
  // for a while may have lost its events in a broker outage: ask for the
  // conversation again (the snapshot carries its state and text).
  const QUIET_MS = 10000;
  setInterval(() => {
    if (activeReply() && socket && socket.readyState === WebSocket.OPEN && Date.now() - lastEventAt > QUIET_MS) {
      lastEventAt = Date.now();
      socket.send(JSON.stringify({ action: "sync" }));
    }
  }, 2000);

  function send(payload) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showBanner(gettext("Not connected — reconnecting. Your text is still in the box."));
      return false;
    }
    socket.send(JSON.stringify(payload));
    return true;
  }

  // ---- The home page's first message ------------------------------------------------
  async function startConversation(text, documents) {
    if (starting) return;
    starting = true;
    input.value = "";
    hideBanner();
    refreshControls();
    let answer;
    try {
      const startModel = document.getElementById("start-model");
      const preset = chat.dataset.preset;  // chosen on the empty page (presets.js)
      const model = preset ? `preset:${preset}` : startModel?.value;
      const body = model ? { content: text, model } : { content: text };
      if (chat.dataset.folderId) body.folder_id = Number(chat.dataset.folderId);  // folders.js
      if (documents.length) body.documents = documents;
      const response = await postJSON(chat.dataset.startUrl, body);
      answer = await response.json();
    } catch (error) {
      answer = { error: gettext("The server could not be reached.") };
    }
    starting = false;
    if (answer.conversation && documents.length) attachments.sent(documents);
    if (answer.conversation) enterConversation(answer.conversation);
    if (answer.error) {
      // Refused with nothing stored: the text goes back in the box.
      if (!answer.conversation && !input.value) input.value = text;
      showBanner(answer.error, answer.conversation ? "" : "info");
    }
    refreshControls();
    input.focus();
  }

  // The page becomes the new conversation's own page: its URL (no reload), its
  // socket (whose snapshot brings the stored message and reply), its tools.
  function enterConversation(conversation) {
    chat.dataset.conversationId = conversation.id;
    chat.dataset.wsPath = conversation.ws_path;
    history.replaceState(null, "", conversation.url);
    title.textContent = conversation.title || gettext("New conversation");
    document.title = `${title.textContent} · SanjAI`;
    settings.dataset.url = conversation.settings_url;
    document.getElementById("export-json").href = `${conversation.export_url}?format=json`;
    document.getElementById("export-md").href = `${conversation.export_url}?format=md`;
    if (sharePanel) sharePanel.dataset.url = conversation.share_url;
    for (const tool of chat.querySelectorAll(".chat-tools [hidden]")) tool.hidden = false;
    document.getElementById("preset-start")?.remove();  // the conversation has begun
    const startModel = document.getElementById("start-model");
    if (startModel) {  // chosen for this conversation: from now on its settings panel says so
      settings.elements.model.value = startModel.value;
      document.getElementById("start-model-label").hidden = true;
    }
    connect();
    refreshSidebar();
  }

  // ---- Composer and controls ------------------------------------------------------
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) {
      showBanner(gettext("Type a message first."), "info");
      input.focus();
      return;
    }
    if (activeReply()) return;
    const still = attachments && attachments.uploading();
    if (still) {
      showBanner(interpolate(gettext("%(name)s is still uploading: send once its chip says so. Your text stays in the box."), { name: still }, true), "info");
      return;
    }
    const documents = attachments ? attachments.pendingIds() : [];
    const payload = documents.length ? { action: "send", content: text, documents } : { action: "send", content: text };
    if (!chat.dataset.conversationId) {
      startConversation(text, documents);
    } else if (send(payload)) {
      unsent = text;
      unsentDocuments = documents;
      input.value = "";
      hideBanner();
    }
  });

  input.addEventListener("keydown", (event) => {
    const plain = !event.shiftKey && !event.ctrlKey && !event.metaKey && !event.altKey && !event.isComposing;
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    } else if (event.key === "ArrowUp" && plain && input.value === "" && !activeReply()) {
      const mine = lastOf("user");
      if (mine && mine.el) {
        event.preventDefault();
        startEdit(mine);
      }
    }
  });

  // Esc stops the reply being written, wherever the focus is (an open dialog,
  // drawer or edit box takes Esc for itself first).
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || event.defaultPrevented || document.querySelector("dialog[open]")) return;
    const reply = activeReply();
    if (reply) {
      event.preventDefault();
      send({ action: "cancel", message_id: reply.id });
      announce(gettext("Stopping the reply."));
    }
  });

  stopButton.addEventListener("click", () => {
    const reply = activeReply();
    if (reply) send({ action: "cancel", message_id: reply.id });
  });

  // ---- Share by link ----------------------------------------------------------------
  const sharePanel = document.getElementById("share-panel");
  if (sharePanel) setUpSharing();

  function setUpSharing() {
    const toggle = document.getElementById("share-toggle");
    const link = document.getElementById("share-link");
    const url = document.getElementById("share-url");
    const make = document.getElementById("share-make");
    const revoke = document.getElementById("share-revoke");

    toggle.addEventListener("click", () => {
      sharePanel.hidden = !sharePanel.hidden;
      toggle.setAttribute("aria-expanded", String(!sharePanel.hidden));
    });

    async function call(method, body) {
      const response = await fetch(sharePanel.dataset.url, {
        method, body, headers: { "X-CSRFToken": csrfToken() }, credentials: "same-origin",
      });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(answer.error || interpolate(gettext("The server answered %(status)s."), { status: response.status }, true));
      return answer;
    }

    make.addEventListener("click", async () => {
      const form = new FormData();
      if (document.getElementById("share-show-owner").checked) form.set("show_owner", "1");
      try {
        const answer = await call("POST", form);
        url.value = answer.url;
        link.hidden = revoke.hidden = false;
        make.textContent = gettext("Update the link");
        announce(gettext("The link shows the conversation as it is now."));
      } catch (error) {
        showBanner(error.message);
      }
    });

    revoke.addEventListener("click", async () => {
      try {
        await call("DELETE");
        url.value = "";
        link.hidden = revoke.hidden = true;
        make.textContent = gettext("Create a link");
        announce(gettext("The conversation is no longer shared: its link answers nothing."));
      } catch (error) {
        showBanner(error.message);
      }
    });

    document.getElementById("share-copy").addEventListener("click", (event) => {
      copyText(url.value, gettext("Link copied."), event.currentTarget);
    });
  }

  // ---- Settings panel -------------------------------------------------------------
  const settings = document.getElementById("settings");
  const settingsToggle = document.getElementById("settings-toggle");
  const settingsStatus = document.getElementById("settings-status");

  function fillSettings(conversation) {
    settings.elements.system_prompt.value = conversation.system_prompt || "";
    if (conversation.model) settings.elements.model.value = conversation.model;
    if (typeof conversation.use_memory === "boolean") settings.elements.use_memory.checked = conversation.use_memory;
    for (const [name, value] of Object.entries(conversation.params || {})) {
      if (settings.elements[name]) settings.elements[name].value = value;
    }
  }

  settingsToggle.addEventListener("click", () => {
    settings.hidden = !settings.hidden;
    settingsToggle.setAttribute("aria-expanded", String(!settings.hidden));
  });

  settings.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      system_prompt: settings.elements.system_prompt.value,
      model: settings.elements.model.value,
      use_memory: settings.elements.use_memory.checked,
    };
    for (const name of ["max_new_tokens", "temperature", "top_p", "repetition_penalty"]) {
      body[name] = Number(settings.elements[name].value);
    }
    const response = await postJSON(settings.dataset.url, body);
    const answer = await response.json();
    settingsStatus.textContent = response.ok ? gettext("Saved.") : answer.error;
  });

  // Replies rendered by the server arrive as plain text: show them as
  // Markdown at once, before the socket's snapshot replaces them.
  for (const content of list.querySelectorAll(".bubble.assistant .content")) {
    renderMarkdownInto(content, content.textContent, false);
  }
  if (chat.dataset.conversationId) connect();

  // ---- The model's state: "Loading <model> … NN%" while the workers load it -------------
  const modelStatus = document.getElementById("model-status");

  async function watchModel() {
    let next = 15000;  // a ready model: look again now and then, in case its worker goes
    try {
      const response = await fetch(modelStatus.dataset.url, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const { models } = await response.json();
        labelModelChoices(models);
        // The conversation's own model; on the home page, any.
        const chosen = models.filter((model) => model.name === currentModel());
        const loading = chosen.find((model) => model.state === "loading");
        const wasLoading = modelLoading;
        modelLoading = loading === undefined || chosen.some((model) => model.state === "ready") ? "" :
          interpolate(gettext("Loading %(model)s … %(progress)s%"), { model: loading.name, progress: loading.progress }, true) +
          (loading.stage ? ` (${loading.stage})` : "");
        if (modelLoading) {
          modelStatus.textContent = modelLoading;
          next = 2000;
        }
        modelStatus.hidden = !modelLoading;
        const waiting = activeReply();
        if (waiting && waiting.status === "pending" && modelLoading !== wasLoading) renderSoon(waiting);
        refreshControls();
      }
    } catch (error) {
      next = 5000;  // the server is restarting: the socket says so
    }
    setTimeout(watchModel, next);
  }
  watchModel();

  // The model this page sends to: the new chat's choice, else the conversation's.
  function currentModel() {
    const startModel = document.getElementById("start-model");
    if (startModel && !chat.dataset.conversationId) return startModel.value;
    return settings.elements.model.value;
  }

  // The model choices say what each model is doing right now.
  const STATE_LABELS = { ready: gettext("ready"), loading: gettext("loading"), no_worker: gettext("no worker") };
  function labelModelChoices(models) {
    for (const option of document.querySelectorAll("select[data-model-choice] option")) {
      const model = models.find((candidate) => candidate.name === option.value);
      if (!model) continue;
      const state = model.state === "loading"
        ? interpolate(gettext("loading %(progress)s%"), { progress: model.progress }, true) : STATE_LABELS[model.state];
      option.textContent = `${model.name} (${state})`;
    }
  }

  // ---- Sidebar (also on the empty home page) -----------------------------------------
  function setUpSidebar() {
    const sidebar = document.getElementById("sidebar");
    const toggle = document.getElementById("sidebar-toggle");
    if (toggle && sidebar) {
      toggle.addEventListener("click", () => setSidebarOpen(!sidebar.classList.contains("open")));
      // At phone width the open drawer covers the page: a tap beside it closes it
      // (and does nothing else), as Esc does.
      document.addEventListener("click", (event) => {
        if (drawerOpen() && !sidebar.contains(event.target) && !toggle.contains(event.target)) {
          event.preventDefault();
          event.stopPropagation();
          setSidebarOpen(false);
        }
      }, true);
    }
    if (!sidebar) return;
    document.addEventListener("sidebar:refresh", refreshSidebar);  // folders.js, after a change
    // Delegated: the list's items are replaced by refreshes and added by More.
    sidebar.addEventListener("submit", (event) => {
      const form = event.target.closest(".delete-form");
      if (!form) return;
      const name = form.closest("li").querySelector(".conversation-link").textContent;
      const question = interpolate(gettext("Delete “%(name)s” and all its messages? This cannot be undone."), { name }, true);
      if (!confirm(question)) event.preventDefault();
    });
    sidebar.addEventListener("click", (event) => {
      const more = event.target.closest("a[data-more]");
      if (more) {
        event.preventDefault();
        loadMore(more);
        return;
      }
      const action = event.target.closest("button[data-action]");
      if (action && action.dataset.action === "rename") rename(action);
      if (action && action.dataset.action === "flags") setFlag(action);
    });
  }

  async function rename(b) {
    const item = b.closest("li");
    const link = item.querySelector(".conversation-link");
    const old = link.textContent;
    const name = prompt(gettext("Rename conversation"), old);
    if (name === null || !name.trim()) return;
    const form = new FormData();
    form.append("title", name);
    const response = await fetch(b.dataset.url, {
      method: "POST", body: form, headers: { "X-CSRFToken": csrfToken() }, credentials: "same-origin",
    });
    if (!response.ok) return;
    const answer = await response.json();
    link.textContent = answer.title;
    // "Rename <title>", in whichever word order the page's language has.
    for (const labelled of item.querySelectorAll("button[aria-label]")) {
      labelled.setAttribute("aria-label", labelled.getAttribute("aria-label").replace(old, answer.title));
    }
    const current = document.getElementById("chat");
    if (current && current.dataset.conversationId === item.dataset.id) {
      document.getElementById("chat-title").textContent = answer.title;
    }
  }

  // Pin, unpin, archive, unarchive; then the list is read again, so the item
  // lands in its place (pinned on top, archived out of the list).
  async function setFlag(b) {
    const response = await postJSON(b.dataset.url, { [b.dataset.flag]: b.dataset.value === "true" });
    if (response.ok) await refreshSidebar();
  }

  function sidebarFragment(html) {
    const template = document.createElement("template");
    template.innerHTML = html; // our own server's rendering of the list, never model output
    return template.content;
  }

  async function refreshSidebar() {
    const groups = document.getElementById("conversation-list");
    if (!groups) return;
    const response = await fetch(groups.dataset.url, { credentials: "same-origin" });
    if (!response.ok) return;
    groups.replaceChildren(sidebarFragment(await response.text()));
    markActive();
  }

  // The next page: its groups join the list, the first one merged into the last
  // group shown when both are the same day group.
  async function loadMore(link) {
    const groups = document.getElementById("conversation-list");
    const response = await fetch(link.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const fragment = sidebarFragment(await response.text());
    link.remove();
    for (const group of [...fragment.querySelectorAll(".conversation-group")]) {
      const shown = groups.querySelectorAll(".conversation-group");
      const last = shown[shown.length - 1];
      if (last && last.dataset.group === group.dataset.group) {
        last.querySelector("ul").append(...group.querySelectorAll("li"));
        group.remove();
      }
    }
    groups.append(fragment);
    markActive();
  }

  function markActive() {
    const current = document.getElementById("chat")?.dataset.conversationId;
    for (const item of document.querySelectorAll(".conversation-item")) {
      const active = item.dataset.id === current;
      item.classList.toggle("active", active);
      const link = item.querySelector(".conversation-link");
      if (active) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
    }
  }

  // The sidebar is a drawer only at phone width, where its toggle shows.
  function drawerOpen() {
    const sidebar = document.getElementById("sidebar");
    const toggle = document.getElementById("sidebar-toggle");
    return Boolean(sidebar && toggle && sidebar.classList.contains("open") && getComputedStyle(toggle).display !== "none");
  }

  function setSidebarOpen(open) {
    const sidebar = document.getElementById("sidebar");
    const toggle = document.getElementById("sidebar-toggle");
    if (!sidebar || !toggle) return;
    sidebar.classList.toggle("open", open);
    toggle.setAttribute("aria-expanded", String(open));
    if (open && getComputedStyle(toggle).display !== "none") sidebar.querySelector("button, a, input")?.focus();
  }

  // ---- Keyboard shortcuts on every page with the sidebar (the chat's own are above) --------
  function setUpShortcuts() {
    const help = document.getElementById("shortcuts");
    const newChat = document.getElementById("new-chat");
    if (!help) return;
    const openHelp = () => { if (!help.open) help.showModal(); };
    document.getElementById("shortcuts-open").addEventListener("click", openHelp);
    document.getElementById("shortcuts-close").addEventListener("click", () => help.close());
    const typing = (target) => target instanceof HTMLElement &&
      (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
    document.addEventListener("keydown", (event) => {
      if (event.defaultPrevented || event.isComposing) return;
      const mod = event.ctrlKey || event.metaKey;
      if (mod && event.shiftKey && !event.altKey && event.code === "KeyO") {
        event.preventDefault();
        if (newChat) location.assign(newChat.href);
      } else if (mod && !event.shiftKey && !event.altKey && (event.key === "/" || event.code === "Slash")) {
        event.preventDefault();
        if (help.open) help.close(); else openHelp();
      } else if (event.key === "?" && !mod && !event.altKey && !typing(event.target) && !help.open) {
        event.preventDefault();
        openHelp();
      } else if (event.key === "Escape" && !help.open && drawerOpen()) {
        event.preventDefault();
        setSidebarOpen(false);
        document.getElementById("sidebar-toggle")?.focus();
      }
    });
  }

})();
