// The sidebar's conversation list (also on the empty home page): delete, rename,
// pin and archive, More, refreshes; at phone width, a drawer.
import { csrfToken, postJSON } from "./http.js";

export function setUpSidebar() {
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

export async function refreshSidebar() {
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
export function drawerOpen() {
  const sidebar = document.getElementById("sidebar");
  const toggle = document.getElementById("sidebar-toggle");
  return Boolean(sidebar && toggle && sidebar.classList.contains("open") && getComputedStyle(toggle).display !== "none");
}

export function setSidebarOpen(open) {
  const sidebar = document.getElementById("sidebar");
  const toggle = document.getElementById("sidebar-toggle");
  if (!sidebar || !toggle) return;
  sidebar.classList.toggle("open", open);
  toggle.setAttribute("aria-expanded", String(open));
  if (open && getComputedStyle(toggle).display !== "none") sidebar.querySelector("button, a, input")?.focus();
}
