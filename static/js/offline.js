// The offline page: the conversation list this browser kept for the user
// logged in on it (static/js/pwa.js writes it), shown as it was last seen.
// Nothing here sends anything: the page has no message box.
"use strict";

(function () {
  const KEY = "sanjai:conversations";
  const page = document.getElementById("offline");
  if (!page) return;

  document.getElementById("offline-retry").addEventListener("click", () => location.reload());
  // Back online: load the page that was asked for, fresh from the server.
  window.addEventListener("online", () => location.reload());

  let saved;
  try {
    saved = JSON.parse(localStorage.getItem(KEY));
  } catch (error) {
    saved = null; // storage off, or not ours to read
  }
  if (!saved || !Array.isArray(saved.conversations) || saved.conversations.length === 0) return;

  const when = new Date(saved.savedAt);
  // The words come translated in the page (templates/chat/offline.html): no catalog offline.
  document.getElementById("offline-saved").textContent = Number.isNaN(when.getTime())
    ? page.dataset.savedText
    : page.dataset.savedWhenText.replace("{when}", when.toLocaleString(document.documentElement.lang || undefined));

  const list = document.getElementById("offline-list");
  const href = (id) => page.dataset.conversationUrl.replace("/0/", `/${id}/`);
  let group = null;
  let items = null;
  for (const conversation of saved.conversations) {
    if (!/^\d+$/.test(String(conversation.id))) continue;
    if (!items || conversation.group !== group) {
      group = conversation.group;
      const section = document.createElement("section");
      section.className = "conversation-group";
      if (group) {
        const heading = document.createElement("h3");
        heading.textContent = group;
        section.append(heading);
      }
      items = document.createElement("ul");
      items.className = "conversation-list";
      section.append(items);
      list.append(section);
    }
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = href(conversation.id);
    link.textContent = conversation.title; // text, never HTML: titles are the user's own words
    item.append(link);
    items.append(item);
  }
})();
