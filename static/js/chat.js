// The chat page: one websocket per open conversation, replies streamed in as
// they are generated. No framework and no build step. Everything shown comes
// from the server (a snapshot on every (re)connect, then events), so a reload
// or a dropped connection never loses anything.
"use strict";

(function () {
  const chat = document.getElementById("chat");
  setUpSidebar();
  if (!chat) return;

  const list = document.getElementById("messages");
  const input = document.getElementById("input");
  const composer = document.getElementById("composer");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const banner = document.getElementById("banner");
  const announcer = document.getElementById("announcer");
  const title = document.getElementById("chat-title");

  const messages = new Map(); // id -> {id, role, content, status, error, usage, el}
  let socket = null;
  let retryDelay = 500;
  let closedForGood = false;
  let renderQueued = new Set();
  // Text sent but not yet stored: put back in the box if the server refuses it
  // (too long, too many replies at once), so nothing the user wrote is lost.
  let unsent = null;
  let modelLoading = false; // the workers are still loading the model: sending waits
  let lastEventAt = Date.now();
  let everOpened = false; // the socket has been open before: a snapshot now follows a reconnect
  let reconnected = false;

  // ---- Markdown, sanitized -------------------------------------------------
  // Model output and user text are untrusted: Markdown becomes HTML only
  // through DOMPurify, with no images, media, forms or styles (nothing that
  // could run script or load remote content), no id, class or style (nothing
  // that could dress up as, or be styled as, the app's own interface), and
  // links open safely.
  const PURIFY = {
    FORBID_TAGS: ["img", "picture", "video", "audio", "source", "iframe", "object", "embed",
      "form", "input", "button", "textarea", "select", "style", "link", "meta", "svg", "math"],
    FORBID_ATTR: ["style", "class", "id", "srcset", "background", "poster"],
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
  };
  let purifyHooked = false;

  function renderMarkdown(text) {
    if (!window.marked || !window.DOMPurify) {
      const pre = document.createElement("div");
      pre.style.whiteSpace = "pre-wrap";
      pre.textContent = text;
      return pre.outerHTML;
    }
    if (!purifyHooked) {
      window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
        if (node.tagName === "A") {
          node.setAttribute("target", "_blank");
          node.setAttribute("rel", "noopener noreferrer nofollow");
        }
      });
      purifyHooked = true;
    }
    const html = window.marked.parse(text, { gfm: true, breaks: true, async: false });
    return window.DOMPurify.sanitize(html, PURIFY);
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
      content.innerHTML = renderMarkdown(message.content || "");
      if ((message.status === "pending" || message.status === "streaming") && !message.content) {
        content.append(typingIndicator(message.position));
      }
    } else {
      content.textContent = message.content;
    }
    el.append(content);
    if (message.status === "failed") {
      const error = document.createElement("div");
      error.className = "error-text";
      error.textContent = message.error || "The reply failed.";
      el.append(error);
    } else if (message.status === "cancelled") {
      const note = document.createElement("div");
      note.className = "meta";
      note.textContent = "Stopped.";
      el.append(note);
    }
    el.append(actionsFor(message));
  }

  function typingIndicator(position) {
    const wrap = document.createElement("span");
    wrap.className = "typing";
    wrap.setAttribute("aria-label", position ? `Waiting, position ${position} in the queue` : "SanjAI is typing");
    for (let i = 0; i < 3; i++) wrap.append(document.createElement("span"));
    if (position) {
      const text = document.createElement("small");
      text.className = "muted";
      text.textContent = ` queued (#${position})`;
      wrap.append(text);
    }
    return wrap;
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
    if (message.role === "assistant" && finished && message.content) {
      actions.append(button("Copy", () => copy(message), "Copy this reply"));
    }
    if (!busy && message.role === "assistant" && finished && message === lastOf("assistant")) {
      actions.append(button("Regenerate", () => send({ action: "regenerate" }), "Regenerate the last reply"));
    }
    if (!busy && message.role === "user" && message === lastOf("user")) {
      actions.append(button("Edit", () => startEdit(message), "Edit your last message and resend"));
    }
    return actions;
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
    sendButton.disabled = busy || modelLoading || !socket || socket.readyState !== WebSocket.OPEN;
    stopButton.hidden = !busy;
    for (const m of messages.values()) {
      if (m.el) m.el.querySelector(".actions")?.replaceWith(actionsFor(m));
    }
  }

  async function copy(message) {
    try {
      await navigator.clipboard.writeText(message.content);
      announce("Reply copied.");
    } catch {
      const area = document.createElement("textarea");
      area.value = message.content;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
      announce("Reply copied.");
    }
  }

  function startEdit(message) {
    const el = message.el;
    const box = document.createElement("div");
    box.className = "edit-box";
    const area = document.createElement("textarea");
    area.value = message.content;
    area.rows = 3;
    area.setAttribute("aria-label", "Edit your message");
    const row = document.createElement("div");
    row.className = "actions";
    row.append(
      button("Save and resend", () => {
        if (!area.value.trim()) return showBanner("The message is empty.", "info");
        send({ action: "edit", content: area.value });
      }),
      button("Cancel", () => render(message)),
    );
    box.append(area, row);
    el.replaceChildren(box);
    area.focus();
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
      title.textContent = event.conversation.title || "New conversation";
      fillSettings(event.conversation);
      for (const payload of event.messages) render(upsert(payload));
      if (!event.messages.length) {
        const empty = document.createElement("li");
        empty.id = "empty-chat";
        empty.className = "muted empty-chat";
        empty.textContent = "Ask anything. Replies are generated on this machine.";
        list.append(empty);
      }
      list.scrollTop = list.scrollHeight;
      // Sent just before the connection dropped: stored, or back in the box.
      if (unsent !== null && reconnected) {
        const mine = event.messages.filter((m) => m.role === "user");
        const stored = mine.length && mine[mine.length - 1].content === unsent.trim();
        if (!stored && !input.value) input.value = unsent;
        unsent = null;
      }
    },
    "message.created"(event) {
      const message = upsert(event.message);
      withScroll(() => render(message));
      if (message.role === "user") unsent = null;
      if (message.role === "user" && title.textContent === "New conversation") {
        title.textContent = message.content.split(/\s+/).join(" ").slice(0, 60);
        const link = document.querySelector(`.conversation-item[data-id="${chat.dataset.conversationId}"] .conversation-link`);
        if (link) link.textContent = title.textContent;
      }
      if (message.role === "assistant") announce("SanjAI is replying.");
    },
    "message.queued"(event) {
      const message = messages.get(event.message_id);
      if (!message) return;
      message.position = event.position;
      renderSoon(message);
    },
    "message.started"(event) {
      const message = messages.get(event.message_id);
      if (!message) return;
      message.status = "streaming";
      message.position = null;
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
    "message.done"(event) { finish(event, "done", "Reply finished."); },
    "message.cancelled"(event) { finish(event, "cancelled", "Reply stopped."); },
    "message.failed"(event) {
      finish(event, "failed", "The reply failed.");
      if (event.code === "worker_unavailable" || event.code === "model_loading") {
        showBanner(`${event.error} Your message is saved: once a worker runs, use Regenerate.`);
      }
    },
    "message.deleted"(event) {
      const message = messages.get(event.message_id);
      if (message && message.el) message.el.remove();
      messages.delete(event.message_id);
    },
    "message.edited"(event) {
      const message = messages.get(event.message_id);
      if (!message) return;
      message.content = event.content;
      render(message);
    },
    error(event) {
      if (event.action === "send" && unsent !== null && !input.value) input.value = unsent;
      unsent = null;
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
    message.position = null;
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
      if (event.code === 4401) {
        closedForGood = true;
        location.href = `/login/?next=${encodeURIComponent(location.pathname)}`;
      } else if (event.code === 4404) {
        closedForGood = true;
        showBanner("This conversation does not exist or is not yours.");
      } else if (!closedForGood) {
        showBanner(`Connection lost — reconnecting in ${Math.round(retryDelay / 100) / 10} s…`);
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
      showBanner("Not connected — reconnecting. Your text is still in the box.");
      return false;
    }
    socket.send(JSON.stringify(payload));
    return true;
  }

  // ---- Composer and controls ------------------------------------------------------
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) {
      showBanner("Type a message first.", "info");
      input.focus();
      return;
    }
    if (activeReply()) return;
    if (send({ action: "send", content: text })) {
      unsent = text;
      input.value = "";
      hideBanner();
    }
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });

  stopButton.addEventListener("click", () => {
    const reply = activeReply();
    if (reply) send({ action: "cancel", message_id: reply.id });
  });

  // ---- Settings panel -------------------------------------------------------------
  const settings = document.getElementById("settings");
  const settingsToggle = document.getElementById("settings-toggle");
  const settingsStatus = document.getElementById("settings-status");

  function fillSettings(conversation) {
    settings.elements.system_prompt.value = conversation.system_prompt || "";
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
    const body = { system_prompt: settings.elements.system_prompt.value };
    for (const name of ["max_new_tokens", "temperature", "top_p", "repetition_penalty"]) {
      body[name] = Number(settings.elements[name].value);
    }
    const response = await postJSON(settings.dataset.url, body);
    const answer = await response.json();
    settingsStatus.textContent = response.ok ? "Saved." : answer.error;
  });

  // Replies rendered by the server arrive as plain text: show them as
  // Markdown at once, before the socket's snapshot replaces them.
  for (const content of list.querySelectorAll(".bubble.assistant .content")) {
    content.innerHTML = renderMarkdown(content.textContent);
  }
  connect();

  // ---- The model's state: "Loading <model> … NN%" while the workers load it -------------
  const modelStatus = document.getElementById("model-status");

  async function watchModel() {
    let next = 15000;  // a ready model: look again now and then, in case its worker goes
    try {
      const response = await fetch(modelStatus.dataset.url, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const { models } = await response.json();
        const loading = models.find((model) => model.state === "loading");
        modelLoading = loading !== undefined && !models.some((model) => model.state === "ready");
        if (modelLoading) {
          modelStatus.textContent = `Loading ${loading.name} … ${loading.progress}%` +
            (loading.stage ? ` (${loading.stage})` : "");
          next = 2000;
        }
        modelStatus.hidden = !modelLoading;
        refreshControls();
      }
    } catch (error) {
      next = 5000;  // the server is restarting: the socket says so
    }
    setTimeout(watchModel, next);
  }
  watchModel();

  // ---- Sidebar (also on the empty home page) -----------------------------------------
  function setUpSidebar() {
    const sidebar = document.getElementById("sidebar");
    const toggle = document.getElementById("sidebar-toggle");
    if (toggle && sidebar) {
      toggle.addEventListener("click", () => {
        const open = sidebar.classList.toggle("open");
        toggle.setAttribute("aria-expanded", String(open));
      });
    }
    document.querySelectorAll(".delete-form").forEach((form) => {
      form.addEventListener("submit", (event) => {
        const name = form.closest("li").querySelector(".conversation-link").textContent;
        if (!confirm(`Delete “${name}” and all its messages? This cannot be undone.`)) event.preventDefault();
      });
    });
    document.querySelectorAll('[data-action="rename"]').forEach((b) => {
      b.addEventListener("click", async () => {
        const link = b.closest("li").querySelector(".conversation-link");
        const name = prompt("Rename conversation", link.textContent);
        if (name === null || !name.trim()) return;
        const form = new FormData();
        form.append("title", name);
        const response = await fetch(b.dataset.url, {
          method: "POST", body: form, headers: { "X-CSRFToken": csrfToken() }, credentials: "same-origin",
        });
        if (!response.ok) return;
        const answer = await response.json();
        link.textContent = answer.title;
        const item = b.closest("li");
        item.querySelector('[data-action="rename"]').setAttribute("aria-label", `Rename ${answer.title}`);
        item.querySelector(".delete-form button").setAttribute("aria-label", `Delete ${answer.title}`);
        const current = document.getElementById("chat");
        if (current && current.dataset.conversationId === b.closest("li").dataset.id) {
          document.getElementById("chat-title").textContent = answer.title;
        }
      });
    });
  }

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function postJSON(url, body) {
    return fetch(url, {
      method: "POST",
      body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      credentials: "same-origin",
    });
  }
})();
