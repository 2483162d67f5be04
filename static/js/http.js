// The page's one way to call its own endpoints: the CSRF token Django keeps in
// its cookie, and a JSON POST that sends it. Loaded first on every page
// (templates/base.html), so the page's other scripts share it.
"use strict";

window.SanjaiHttp = (function () {
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

  return { csrfToken, postJSON };
})();
