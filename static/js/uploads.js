// Documents over the REST API with the browser's session (chat/rest_api.py), shared by
// the composer's attachments (attachments.js) and the documents page (documents.js):
// an upload that reports its progress, JSON calls, and how a document's state reads.
"use strict";

window.SanjaiUploads = (function () {
  const { csrfToken } = window.SanjaiHttp;  // static/js/http.js

  // The server's own words for a refusal. The API answers {"detail": "..."}; a body
  // refused from its head (sanjai_site/uploads.py) gets a small HTML page instead.
  function errorText(status, type, body) {
    if ((type || "").includes("json")) {
      try {
        const detail = JSON.parse(body).detail;
        if (typeof detail === "string" && detail) return detail;
        if (Array.isArray(detail) && detail.length) return detail.map((item) => item.msg || String(item)).join("; ");
      } catch (error) {
        // not JSON after all: fall through
      }
    }
    if ((type || "").includes("html") && body) {
      const page = new DOMParser().parseFromString(body, "text/html");
      for (const link of page.querySelectorAll("a")) link.remove();
      const text = (page.body.textContent || "").trim();
      if (text) return text;
    }
    return interpolate(gettext("The server answered %(status)s."), { status }, true);
  }

  // POST /documents, multipart field `file`. XMLHttpRequest rather than fetch: only it
  // reports how much of the body has gone. Resolves {document} or {error}, never rejects.
  function upload(url, file, onProgress) {
    return new Promise((resolve) => {
      const request = new XMLHttpRequest();
      request.open("POST", url);
      request.setRequestHeader("X-CSRFToken", csrfToken());
      request.setRequestHeader("Accept", "application/json");
      request.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable && onProgress) onProgress(Math.round((100 * event.loaded) / event.total));
      });
      request.addEventListener("load", () => {
        if (request.status === 201) {
          resolve({ document: JSON.parse(request.responseText) });
        } else {
          const text = errorText(request.status, request.getResponseHeader("Content-Type"), request.responseText);
          resolve({ error: text, status: request.status });
        }
      });
      // A refusal from the request's head can close the connection before the browser
      // reads the answer: then there is no message to show but this one.
      request.addEventListener("error", () => resolve({
        error: interpolate(gettext("%(name)s: the upload stopped (the server could not be reached, or refused the file as too large)."), { name: file.name }, true),
        status: 0,
      }));
      const form = new FormData();
      form.append("file", file);
      request.send(form);
    });
  }

  // A JSON call: resolves {ok: true, data} or {ok: false, error}, never rejects.
  async function call(method, url, body) {
    let response;
    try {
      response = await fetch(url, {
        method,
        body: body === undefined ? undefined : JSON.stringify(body),
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
        credentials: "same-origin",
      });
    } catch (error) {
      return { ok: false, error: gettext("The server could not be reached.") };
    }
    const text = await response.text();
    if (!response.ok) {
      return { ok: false, error: errorText(response.status, response.headers.get("Content-Type"), text) };
    }
    return { ok: true, data: text ? JSON.parse(text) : null };
  }

  // In the page's language: "1.5 kB" in English, "1,5 kB" in German.
  function formatSize(bytes) {
    const lang = document.documentElement.lang || undefined;
    const fixed = (value, digits) => value.toLocaleString(lang, { minimumFractionDigits: digits, maximumFractionDigits: digits });
    if (bytes < 1000) return interpolate(gettext("%(size)s B"), { size: fixed(bytes, 0) }, true);
    if (bytes < 1_000_000) return interpolate(gettext("%(size)s kB"), { size: fixed(bytes / 1000, bytes < 10_000 ? 1 : 0) }, true);
    return interpolate(gettext("%(size)s MB"), { size: fixed(bytes / 1_000_000, 1) }, true);
  }

  // A document's state in a few words: "uploading 40%", "indexing 40%", "ready", "failed".
  function stateText(item) {
    const progress = { progress: item.progress || 0 };
    if (item.status === "uploading") return interpolate(gettext("uploading %(progress)s%"), progress, true);
    if (item.status === "processing") return interpolate(gettext("indexing %(progress)s%"), progress, true);
    if (item.status === "error" || item.status === "failed") return gettext("failed");
    return gettext("ready");
  }

  return { upload, call, errorText, formatSize, stateText };
})();
