// Documents in the composer (issue 20): the paperclip, and files dropped on the composer
// or pasted into its box, are uploaded at once (POST /api/v1/documents, uploads.js) and shown as chips above the
// box: name, state, progress, and an ✕. Until they are sent they are "pending": the next
// message carries their ids (`documents`, chat.js) and the server attaches them to the
// conversation. The conversation's attached documents (the socket's snapshot) are chips
// too; their ✕ detaches one (DELETE .../documents/{id}; the file stays in your documents).
// Progress comes from the socket's `document.progress` for attached documents, and from
// polling every 2 s while any is being read: pending ones no socket speaks of yet, and
// events are hints that a dropped connection loses.
"use strict";

window.SanjaiAttachments = (function () {
  const POLL_MS = 2000;

  function setUp({ list, composer, fileInput, attachButton, documentsUrl, conversationsUrl, conversationId, showBanner, announce }) {
    const { upload, call, stateText } = window.SanjaiUploads;  // static/js/uploads.js
    let items = [];  // {key, id, name, status, progress, error, attached, sending}
    let nextKey = 1;
    let polling = null;

    function render() {
      // Redrawn whole on each change; a chip's ✕ that had the focus gets it back.
      const focused = list.contains(document.activeElement) ? document.activeElement.closest("li")?.dataset.key : null;
      list.replaceChildren(...items.map(chipFor));
      list.hidden = items.length === 0;
      if (focused) list.querySelector(`li[data-key="${focused}"] button`)?.focus();
    }

    function chipFor(item) {
      const chip = document.createElement("li");
      chip.className = `attachment-chip ${item.attached ? "attached" : "pending"}`;
      chip.dataset.state = item.status;
      chip.dataset.key = item.key;
      if (item.id) chip.dataset.documentId = item.id;
      const name = document.createElement("span");
      name.className = "chip-name";
      name.textContent = item.name;
      const state = document.createElement("span");
      state.className = "chip-state";
      state.textContent = stateText(item);
      chip.append(name, state);
      if (item.status === "uploading" || item.status === "processing") {
        const bar = document.createElement("progress");
        bar.max = 100;
        bar.value = item.progress || 0;
        bar.setAttribute("aria-label", `${item.name}: ${stateText(item)}`);
        chip.append(bar);
      }
      if (item.error) {
        const why = document.createElement("small");
        why.className = "chip-error";
        why.textContent = item.error;
        chip.title = item.error;
        chip.append(why);
      }
      chip.title = chip.title || (item.attached ? gettext("Attached to this conversation") : gettext("Goes with your next message"));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "icon chip-remove";
      remove.textContent = "✕";
      remove.setAttribute("aria-label", interpolate(item.attached
        ? gettext("Detach %(name)s from this conversation") : gettext("Remove %(name)s"), { name: item.name }, true));
      remove.addEventListener("click", () => removeItem(item));
      chip.append(remove);
      return chip;
    }

    async function removeItem(item) {
      if (item.attached && conversationId()) {
        const answer = await call("DELETE", `${conversationsUrl}/${conversationId()}/documents/${item.id}`);
        if (!answer.ok) {
          showBanner(answer.error, "info");
          return;
        }
        announce(interpolate(gettext("%(name)s is detached; it stays in your documents."), { name: item.name }, true));
      }
      items = items.filter((other) => other !== item);
      render();
      composer.querySelector("textarea")?.focus();
    }

    // ---- Uploading -------------------------------------------------------------------
    async function add(files) {
      for (const file of files) {
        const item = { key: nextKey++, id: null, name: file.name, status: "uploading", progress: 0, error: "", attached: false };
        items.push(item);
        render();
        const answer = await upload(documentsUrl, file, (percent) => {
          item.progress = percent;
          render();
        });
        if (answer.error) {
          // The chip stays, failed with the server's reason, until its ✕; the typed text is untouched.
          Object.assign(item, { status: "error", error: answer.error });
          showBanner(answer.error, "info");
        } else {
          Object.assign(item, fromDocument(answer.document));
          announce(interpolate(gettext("%(name)s uploaded; it goes with your next message."), { name: item.name }, true));
        }
        render();
        watch();
      }
    }

    function fromDocument(doc) {
      return { id: doc.id, name: doc.name, status: doc.status, progress: doc.progress, error: doc.error || "" };
    }

    function watch() {
      const waiting = () => items.filter((item) => item.id && item.status === "processing");
      if (polling || !waiting().length) return;
      polling = setInterval(async () => {
        for (const item of waiting()) {
          const answer = await call("GET", `${documentsUrl}/${item.id}`);
          if (answer.ok) Object.assign(item, fromDocument(answer.data));
        }
        render();
        if (!waiting().length) {
          clearInterval(polling);
          polling = null;
        }
      }, POLL_MS);
    }

    attachButton.addEventListener("click", () => fileInput.click());
    fileInput.addEventListener("change", () => {
      const files = [...fileInput.files];
      fileInput.value = "";  // the same file may be chosen again
      add(files);
    });

    // Files pasted into the box are attached too (text pastes as ever).
    composer.querySelector("textarea")?.addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files || [])];
      if (!files.length) return;
      event.preventDefault();
      add(files);
    });

    // Drag and drop onto the composer (or its chips).
    const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
    for (const target of [composer, list]) {
      target.addEventListener("dragover", (event) => {
        if (!hasFiles(event)) return;
        event.preventDefault();  // allows the drop
        event.dataTransfer.dropEffect = "copy";
        composer.classList.add("drop-over");
      });
      target.addEventListener("dragleave", (event) => {
        if (!composer.contains(event.relatedTarget)) composer.classList.remove("drop-over");
      });
      target.addEventListener("drop", (event) => {
        if (!hasFiles(event)) return;
        event.preventDefault();
        composer.classList.remove("drop-over");
        add([...event.dataTransfer.files]);
      });
    }

    // ---- What chat.js asks ---------------------------------------------------------------
    const pending = () => items.filter((item) => !item.attached && item.id && item.status !== "error");

    return {
      // The ids the next message carries.
      pendingIds: () => pending().map((item) => item.id),
      // The name of a file still on its way up: the message waits for it.
      uploading: () => items.find((item) => item.status === "uploading")?.name || null,
      // The message with them was stored: they belong to the conversation now.
      sent(ids) {
        for (const item of pending()) if (ids.includes(item.id)) item.attached = true;
        render();
      },
      // The snapshot's list: the attached ones, as the server has them.
      setAttached(documents) {
        const attachedIds = new Set(documents.map((doc) => doc.id));
        const left = items.filter((item) => !item.attached && !attachedIds.has(item.id));
        const keyOf = (doc) => items.find((item) => item.id === doc.id)?.key || nextKey++;
        items = [...documents.map((doc) => ({ key: keyOf(doc), ...fromDocument(doc), attached: true })), ...left];
        render();
        watch();
      },
      // `document.progress` on the conversation's socket.
      progress(event) {
        const item = items.find((candidate) => candidate.id === event.document_id);
        if (!item) return;
        Object.assign(item, { status: event.status, progress: event.progress, error: event.error || "" });
        if (event.name) item.name = event.name;
        render();
        if (event.status === "ready") announce(interpolate(gettext("%(name)s is ready."), { name: item.name }, true));
        if (event.status === "failed") {
          announce(interpolate(gettext("%(name)s could not be read: %(reason)s"), { name: item.name, reason: item.error }, true));
        }
      },
      // Attached documents still being read: [{name, progress}].
      processing: () => items.filter((item) => item.attached && item.status === "processing")
        .map((item) => ({ id: item.id, name: item.name, progress: item.progress })),
      hasAttached: () => items.some((item) => item.attached),
    };
  }

  return { setUp };
})();
