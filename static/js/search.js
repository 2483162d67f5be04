// Search across your messages. Ctrl+K (⌘K on a Mac) opens the dialog from anywhere
// on the chat page; results come from GET /api/v1/search (chat/search.py), best first.
// Opening one goes to its conversation at #message-<id>: the message is scrolled into
// view and marked. A message on a branch the page does not show is shown by choosing
// its branch, stored as the "‹ n/m ›" controls store it (POST .../branch); the socket
// then sends the new branch and the mark follows it.
"use strict";

(function () {
  const dialog = document.getElementById("search");
  if (!dialog) return;
  const input = document.getElementById("search-input");
  const results = document.getElementById("search-results");
  const status = document.getElementById("search-status");
  const DEBOUNCE_MS = 150;
  let hits = [];
  let selected = -1;
  let timer = null;
  let inFlight = null;

  function openDialog() {
    // At phone width an open drawer takes every tap outside it (chat.js): close it first.
    const drawer = document.getElementById("sidebar-toggle");
    if (drawer && drawer.getAttribute("aria-expanded") === "true") drawer.click();
    if (!dialog.open) dialog.showModal();
    input.select();
  }

  document.addEventListener("keydown", (event) => {
    const mod = event.ctrlKey || event.metaKey;
    if (mod && !event.shiftKey && !event.altKey && (event.key || "").toLowerCase() === "k") {
      event.preventDefault(); // the browser's own Ctrl+K (its address bar search)
      if (dialog.open) dialog.close(); else openDialog();
    }
  });
  for (const button of document.querySelectorAll("[data-search-open]")) {
    button.addEventListener("click", openDialog);
  }

  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(search, DEBOUNCE_MS);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      select(selected + (event.key === "ArrowDown" ? 1 : -1));
    } else if (event.key === "Enter") {
      event.preventDefault();
      const hit = hits[selected] || hits[0];
      if (hit) openHit(hit);
    }
  });

  async function search() {
    const q = input.value.trim();
    if (inFlight) inFlight.abort();
    if (!q) return show([], "");
    inFlight = new AbortController();
    status.textContent = gettext("Searching…");
    try {
      const response = await fetch(`${dialog.dataset.url}?${new URLSearchParams({ q, limit: "20" })}`, {
        signal: inFlight.signal,
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      const body = await response.json();
      if (!response.ok) return show([], body.detail || gettext("The search failed."));
      const count = body.items.length;
      const found = body.next_offset ? gettext("%(count)s+ found.") : ngettext("%(count)s found.", "%(count)s found.", count);
      show(body.items, count ? interpolate(found, { count }, true) : gettext("No messages match."));
    } catch (error) {
      if (error.name !== "AbortError") show([], gettext("Search is not available right now; try again."));
    }
  }

  function show(items, message) {
    hits = items;
    status.textContent = message;
    results.replaceChildren(...items.map(hitItem));
    select(items.length ? 0 : -1);
  }

  function hitItem(hit, index) {
    const item = document.createElement("li");
    item.id = `search-hit-${index}`;
    item.setAttribute("role", "option");
    const link = document.createElement("a");
    link.href = hit.url;
    link.className = "search-hit";
    const head = document.createElement("span");
    head.className = "search-hit-head";
    const title = document.createElement("strong");
    title.textContent = hit.title || gettext("New conversation");
    head.append(title);
    if (hit.archived) {
      const label = document.createElement("span");
      label.className = "search-archived";
      label.textContent = gettext("Archived");
      head.append(label);
    }
    const when = document.createElement("time");
    when.dateTime = hit.created;
    when.textContent = `${hit.role === "user" ? gettext("You") : "SanjAI"} · ${new Date(hit.created).toLocaleString(document.documentElement.lang || undefined)}`;
    head.append(when);
    const snippet = document.createElement("span");
    snippet.className = "search-snippet";
    snippet.innerHTML = hit.snippet; // escaped by the server; only <mark> is markup
    for (const el of snippet.querySelectorAll(":not(mark)")) el.replaceWith(el.textContent);
    link.append(head, snippet);
    link.addEventListener("click", (event) => {
      if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return; // a new tab
      event.preventDefault();
      openHit(hit);
    });
    link.addEventListener("mousemove", () => select(index));
    item.append(link);
    return item;
  }

  function select(index) {
    if (!hits.length) {
      selected = -1;
      input.removeAttribute("aria-activedescendant");
      return;
    }
    selected = (index + hits.length) % hits.length;
    for (const [i, item] of [...results.children].entries()) item.setAttribute("aria-selected", String(i === selected));
    input.setAttribute("aria-activedescendant", `search-hit-${selected}`);
    results.children[selected].scrollIntoView({ block: "nearest" });
  }

  function openHit(hit) {
    dialog.close();
    const target = new URL(hit.url, location.href);
    if (target.pathname !== location.pathname) {
      location.assign(target.href);
      return;
    }
    history.replaceState(null, "", target.href); // this conversation already: no reload
    jump();
  }

  // ---- On the conversation page: find the message, mark it, keep it marked ----------
  function jump() {
    const found = /^#message-(\d+)$/.exec(location.hash);
    const messages = document.getElementById("messages");
    if (!found || !messages) return;
    const id = found[1];
    const mark = () => {
      const el = messages.querySelector(`.bubble[data-id="${id}"]`);
      if (!el) return null;
      for (const old of messages.querySelectorAll(".bubble[data-found]")) old.removeAttribute("data-found");
      el.dataset.found = "";
      sessionStorage.removeItem(`sanjai-search-branch-${id}`);
      centre(messages, el);
      return el;
    };
    let marked = mark();
    if (!marked) chooseBranch(id);
    // The socket's snapshot replaces the server's list (and a branch switch brings
    // another): mark the message again whenever its bubble is a new one.
    const observer = new MutationObserver(() => {
      if (!marked || !marked.isConnected) marked = mark();
    });
    observer.observe(messages, { childList: true });
    setTimeout(() => observer.disconnect(), 15000);
  }

  // The list scrolls, not the page: scrollIntoView would move the page's header off too.
  function centre(list, el) {
    const offset = el.getBoundingClientRect().top - list.getBoundingClientRect().top;
    list.scrollTop += offset - Math.max(0, (list.clientHeight - el.offsetHeight) / 2);
    const box = el.getBoundingClientRect();
    if (box.bottom < 0 || box.top > innerHeight) el.scrollIntoView({ block: "nearest" });
  }

  // Stored first, then the page loads again showing that branch: waiting for the
  // socket's announcement instead would race its first snapshot. Once per message:
  // if it is still not there after the reload, say so rather than loop.
  async function chooseBranch(id) {
    const tried = `sanjai-search-branch-${id}`;
    if (sessionStorage.getItem(tried)) {
      sessionStorage.removeItem(tried);
      return notice(gettext("The message found is on another version of this conversation, and it is no longer in this conversation."));
    }
    const response = await fetch(`/api/v1/messages/${id}/branch`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": window.SanjaiHttp.csrfToken(), Accept: "application/json" },
    });
    if (response.ok) {
      sessionStorage.setItem(tried, "1");
      location.reload();
      return;
    }
    const body = await response.json().catch(() => ({}));
    notice(body.detail
      ? interpolate(gettext("The message found is on another version of this conversation, and %(reason)s"), { reason: body.detail }, true)
      : gettext("The message found is on another version of this conversation, and it could not be shown."));
  }

  function notice(text) {
    const banner = document.getElementById("banner");
    if (!banner) return;
    banner.textContent = text;
    banner.hidden = false;
  }

  window.addEventListener("hashchange", jump);
  jump();
})();
