// On every page: registers the service worker (served at /sw.js, see
// chat/pwa_views.py) and keeps the sidebar's conversation list for the offline
// page, in this browser only and for one user: the list is dropped at logout,
// on any page seen logged out, and when another user logs in.
"use strict";

(function () {
  const KEY = "sanjai:conversations";
  const LIMIT = 500;
  const script = document.getElementById("pwa-script");
  const userId = (script && script.dataset.userId) || "";

  if ("serviceWorker" in navigator && script) {
    navigator.serviceWorker.register(script.dataset.serviceWorker, { scope: "/" }).catch((error) => {
      // The page works the same without it; only the offline page is lost.
      console.warn("The service worker did not register:", error);
    });
  }

  function read() {
    try {
      return JSON.parse(localStorage.getItem(KEY));
    } catch (error) {
      return null;
    }
  }
  function forget() {
    try {
      localStorage.removeItem(KEY);
    } catch (error) {
      // storage switched off: nothing was kept
    }
  }

  const saved = read();
  if (!userId || (saved && saved.user !== userId)) forget();
  const logout = document.getElementById("logout-form");
  if (logout) logout.addEventListener("submit", forget);
  if (!userId) return;

  // A search or the archive shows part of the list: keep the whole one only.
  const query = new URLSearchParams(location.search);
  const sidebar = document.getElementById("sidebar");
  if (!sidebar || query.has("q") || query.has("archived")) return;

  function save() {
    const seen = new Set();
    const conversations = [];
    for (const item of sidebar.querySelectorAll(".conversation-item[data-id]")) {
      const id = item.dataset.id;
      if (!/^\d+$/.test(id) || seen.has(id) || conversations.length >= LIMIT) continue;
      seen.add(id);
      const link = item.querySelector(".conversation-link");
      const section = item.closest("section[aria-label]");
      conversations.push({
        id: Number(id),
        title: (link ? link.textContent : "").trim() || gettext("New conversation"),
        group: section ? section.getAttribute("aria-label") : "",
      });
    }
    try {
      localStorage.setItem(KEY, JSON.stringify({ user: userId, savedAt: new Date().toISOString(), conversations }));
    } catch (error) {
      // full or switched off: the offline page will say nothing is kept
    }
  }

  save();
  // Renames, new chats, deletions and "More" pages change the list in place.
  let pending = 0;
  new MutationObserver(() => {
    clearTimeout(pending);
    pending = setTimeout(save, 200);
  }).observe(sidebar, { childList: true, subtree: true, characterData: true });
})();
