// The service worker (served at /sw.js by chat/pwa_views.py, which puts
// `const SHELL = {version, offline, shell}` above this file).
//
// What it stores: the shell only, the same for everybody (the offline page,
// the manifest, its CSS, JS and icons), fetched without cookies at install.
// Nothing else is ever written to the cache: no page, no API or /v1 answer, no
// websocket. Pages go to the network first; the offline page stands in only
// when the network fails. Nothing is queued to be sent later.
/* global SHELL */
"use strict";

const PREFIX = "sanjai-shell-";
const CACHE = PREFIX + SHELL.version;

self.addEventListener("install", (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      // credentials "omit": no session reaches the server, so nothing of the
      // logged-in user could end up stored; "no-cache": never an old copy.
      await cache.addAll(SHELL.shell.map((url) => new Request(url, { credentials: "omit", cache: "no-cache" })));
      // Safe to take over at once: this worker never answers from the cache
      // while the network answers, so old and new pages cannot mix.
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) {
        if (name.startsWith(PREFIX) && name !== CACHE) await caches.delete(name);
      }
      // The page's request starts while the worker wakes up, not after.
      if (self.registration.navigationPreload) await self.registration.navigationPreload.enable();
      await self.clients.claim();
    })(),
  );
});

async function page(event) {
  try {
    const preloaded = await event.preloadResponse;
    if (preloaded) return preloaded;
    return await fetch(event.request);
  } catch (error) {
    // Only a network failure gets here: a server error is shown as it is.
    const offline = await caches.match(SHELL.offline, { cacheName: CACHE });
    return offline || Response.error();
  }
}

async function shellFile(request) {
  try {
    return await fetch(request);
  } catch (error) {
    const stored = await caches.match(request, { cacheName: CACHE });
    return stored || Response.error();
  }
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (request.mode === "navigate") {
    event.respondWith(page(event));
  } else if (SHELL.shell.includes(url.pathname + url.search)) {
    event.respondWith(shellFile(request));
  }
  // Everything else (the API, /v1, /chat, the chat page's scripts) is left
  // to the browser, as if there were no worker.
});
