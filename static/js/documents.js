// The documents page (chat/document_views.py): your files through the REST API with the
// browser's session. Each row shows the file's state (being read, with its progress;
// ready; failed, with the reason), size and pages; it can be renamed, deleted, or
// attached to a conversation. While any file is being read, the list is asked for
// again every two seconds. Files upload from the chooser or by dropping them on the page.
"use strict";

(function () {
  const constants = JSON.parse(document.getElementById("documents-constants").textContent);
  const { upload, call, formatSize, stateText } = window.SanjaiUploads;  // static/js/uploads.js
  const table = document.getElementById("doc-table");
  const rows = document.getElementById("doc-rows");
  const status = document.getElementById("doc-status");
  const notice = document.getElementById("doc-notice");  // what the last action did
  const errors = document.getElementById("doc-errors");
  const attachDialog = document.getElementById("doc-attach");
  const attachForm = document.getElementById("doc-attach-form");
  const documentsUrl = constants.documentsUrl;

  let documents = [];  // as GET /documents answers, newest first
  const uploads = [];  // {key, name, status: "uploading", progress}: rows until the server has them
  const shown = new Map();  // id or upload key -> its <tr>, kept so that a rename being typed survives a refresh
  let timer = null;
  let attaching = null;  // the document the dialog attaches
  let opener = null;

  function say(text) {
    status.textContent = text;
  }

  function showError(text) {
    const item = document.createElement("li");
    item.textContent = text;
    const dismiss = document.createElement("button");
    dismiss.type = "button";
    dismiss.className = "icon";
    dismiss.textContent = "✕";
    dismiss.setAttribute("aria-label", gettext("Dismiss this message"));
    dismiss.addEventListener("click", () => item.remove());
    item.append(" ", dismiss);
    errors.append(item);
  }

  // ---- The list ----------------------------------------------------------------------
  async function load() {
    const answer = await call("GET", documentsUrl);
    if (!answer.ok) {
      say(interpolate(gettext("Your documents could not be listed: %(reason)s"), { reason: answer.error }, true));
    } else {
      documents = answer.data;
      render();
    }
    schedule(!answer.ok);
  }

  // Ask again while a file is being read (or the server did not answer).
  function schedule(failed) {
    clearTimeout(timer);
    timer = null;
    if (failed || documents.some((doc) => doc.status === "processing")) timer = setTimeout(load, constants.pollMs);
  }

  function render() {
    const items = [...uploads, ...documents];
    const keys = new Set(items.map((item) => String(item.key || item.id)));
    for (const [key, row] of shown) {
      if (!keys.has(key)) {
        row.remove();
        shown.delete(key);
      }
    }
    items.forEach((item, index) => {
      const key = String(item.key || item.id);
      let row = shown.get(key);
      if (!row) {
        row = rowFor(item);
        shown.set(key, row);
      }
      update(row, item);
      // In the list's order, moving only what is out of place: a moved row loses the focus.
      if (rows.children[index] !== row) rows.insertBefore(row, rows.children[index] || null);
    });
    table.hidden = items.length === 0;
    const used = documents.reduce((sum, doc) => sum + doc.size_bytes, 0);
    document.getElementById("doc-used").textContent = formatSize(used);
    const reading = documents.filter((doc) => doc.status === "processing").length;
    const count = documents.length;
    say(items.length === 0 ? gettext("No documents yet: upload one above.") : reading
      ? interpolate(ngettext("%(count)s document, %(reading)s being read.", "%(count)s documents, %(reading)s being read.", count), { count, reading }, true)
      : interpolate(ngettext("%(count)s document.", "%(count)s documents.", count), { count }, true));
  }

  function cell(row, name) {
    const td = document.createElement("td");
    td.className = `doc-${name}`;
    row.append(td);
    return td;
  }

  function rowFor(item) {
    const row = document.createElement("tr");
    for (const name of ["name", "state", "size", "pages", "added", "actions"]) cell(row, name);
    if (item.id) {
      row.dataset.id = item.id;
      const actions = document.createElement("div");  // a flex row inside the cell: the cell stays a cell
      actions.className = "doc-buttons";
      row.querySelector(".doc-actions").append(actions);
      // Their names say which file; update() keeps them current after a rename.
      actions.append(
        action(gettext("Rename"), gettext("Rename %(name)s"), () => startRename(row)),
        action(gettext("Attach…"), gettext("Attach %(name)s to a conversation"), (event) => openAttach(row, event.currentTarget)),
        action(gettext("Delete"), gettext("Delete %(name)s"), () => remove(row)),
      );
      actions.querySelector("button:last-child").classList.add("danger");
    }
    return row;
  }

  function action(label, name, onClick) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.dataset.label = name;
    button.setAttribute("aria-label", name);
    button.addEventListener("click", onClick);
    return button;
  }

  function update(row, item) {
    row.dataset.state = item.status;
    const nameCell = row.querySelector(".doc-name");
    if (!nameCell.querySelector("form")) {
      nameCell.textContent = item.name;
      for (const button of row.querySelectorAll(".doc-actions button")) {
        button.setAttribute("aria-label", interpolate(button.dataset.label, { name: item.name }, true));
      }
    }
    const state = row.querySelector(".doc-state");
    state.replaceChildren();
    const label = document.createElement("span");
    label.className = "doc-state-label";
    label.textContent = stateText(item);
    state.append(label);
    if (item.status === "uploading" || item.status === "processing") {
      const bar = document.createElement("progress");
      bar.max = 100;
      bar.value = item.progress || 0;
      bar.setAttribute("aria-label", `${item.name}: ${stateText(item)}`);
      state.append(" ", bar);
    }
    if (item.status === "failed" && item.error) {
      const why = document.createElement("div");
      why.className = "error-text";
      why.textContent = item.error;
      state.append(why);
    }
    row.querySelector(".doc-size").textContent = item.size_bytes === undefined ? "" : formatSize(item.size_bytes);
    row.querySelector(".doc-pages").textContent = item.page_count ?? (item.status === "ready" ? "—" : "");
    const added = row.querySelector(".doc-added");
    if (item.created && !added.firstChild) {
      const time = document.createElement("time");
      time.dateTime = item.created;
      time.textContent = new Date(item.created).toLocaleString(document.documentElement.lang || undefined, { dateStyle: "medium", timeStyle: "short" });
      added.append(time);
    }
  }

  const byRow = (row) => documents.find((doc) => String(doc.id) === row.dataset.id);

  // ---- Upload --------------------------------------------------------------------------
  let nextKey = 1;
  async function add(files) {
    for (const file of files) {
      const item = { key: `upload-${nextKey++}`, name: file.name, status: "uploading", progress: 0 };
      uploads.unshift(item);
      render();
      const answer = await upload(documentsUrl, file, (percent) => {
        item.progress = percent;
        render();
      });
      uploads.splice(uploads.indexOf(item), 1);
      if (answer.error) {
        showError(answer.error);
        render();
      } else {
        documents.unshift(answer.document);
        render();
        schedule(false);
      }
    }
  }

  const chooser = document.getElementById("doc-file");
  document.getElementById("doc-upload").addEventListener("submit", (event) => {
    event.preventDefault();
    const files = [...chooser.files];
    if (!files.length) {
      showError(gettext("Choose a file first."));
      return;
    }
    chooser.value = "";
    add(files);
  });

  // Files dropped anywhere on the page are uploaded; the upload card shows where.
  const dropZone = document.getElementById("doc-drop");
  const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    dropZone.classList.add("drop-over");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) dropZone.classList.remove("drop-over");
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dropZone.classList.remove("drop-over");
    add([...event.dataTransfer.files]);
  });

  // ---- Rename, delete ----------------------------------------------------------------
  function startRename(row) {
    const doc = byRow(row);
    const nameCell = row.querySelector(".doc-name");
    const form = document.createElement("form");
    form.className = "doc-rename";
    const field = document.createElement("input");
    field.type = "text";
    field.value = doc.name;
    field.maxLength = 255;
    field.required = true;
    field.setAttribute("aria-label", interpolate(gettext("New name for %(name)s"), { name: doc.name }, true));
    const save = document.createElement("button");
    save.type = "submit";
    save.className = "primary";
    save.textContent = gettext("Save");
    const cancel = action(gettext("Cancel"), gettext("Cancel the rename"), () => stop());
    const why = document.createElement("div");
    why.className = "error-text";
    why.setAttribute("role", "alert");
    form.append(field, save, cancel, why);
    nameCell.replaceChildren(form);
    field.focus();
    field.select();

    function stop() {
      nameCell.replaceChildren();
      update(row, byRow(row) || doc);
      row.querySelector(".doc-actions button").focus();
    }
    field.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        stop();
      }
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const answer = await call("PATCH", `${documentsUrl}/${doc.id}`, { name: field.value });
      if (!answer.ok) {
        why.textContent = answer.error;  // what was typed stays in the box
        return;
      }
      Object.assign(doc, answer.data);
      stop();
      notice.textContent = interpolate(gettext("Renamed to %(name)s."), { name: answer.data.name }, true);
    });
  }

  async function remove(row) {
    const doc = byRow(row);
    if (!confirm(interpolate(gettext("Delete “%(name)s”? Its file and passages are deleted, and it leaves every conversation it is attached to."), { name: doc.name }, true))) return;
    const answer = await call("DELETE", `${documentsUrl}/${doc.id}`);
    if (!answer.ok) {
      showError(answer.error);
      return;
    }
    documents = documents.filter((other) => other !== doc);
    render();
    notice.textContent = interpolate(gettext("Deleted %(name)s."), { name: doc.name }, true);
  }

  // ---- Attach to a conversation ------------------------------------------------------------
  const search = document.getElementById("doc-attach-search");
  const choices = document.getElementById("doc-attach-choices");
  const attachError = document.getElementById("doc-attach-error");
  let searchTimer = null;

  function showAttachError(text) {
    attachError.textContent = text || "";
    attachError.hidden = !text;
  }

  async function listConversations() {
    const query = new URLSearchParams({ limit: "20", archived: "false" });
    if (search.value.trim()) query.set("q", search.value.trim());
    const answer = await call("GET", `${constants.conversationsUrl}?${query}`);
    if (!answer.ok) {
      showAttachError(answer.error);
      return;
    }
    const items = answer.data.items.map((conversation, index) => {
      const label = document.createElement("label");
      label.className = "attach-choice";
      const radio = document.createElement("input");
      radio.type = "radio";
      radio.name = "conversation";
      radio.value = conversation.id;
      radio.checked = index === 0;
      label.append(radio, ` ${conversation.title || gettext("New conversation")}`);
      return label;
    });
    choices.replaceChildren(...items);
    showAttachError(items.length ? "" : search.value.trim() ? gettext("No conversation matches.") : gettext("You have no conversations yet: start a chat first."));
  }

  function openAttach(row, from) {
    attaching = byRow(row);
    opener = from;
    document.getElementById("doc-attach-title").textContent = interpolate(gettext("Attach “%(name)s” to a conversation"), { name: attaching.name }, true);
    search.value = "";
    choices.replaceChildren();
    showAttachError("");
    attachDialog.showModal();
    search.focus();
    listConversations();
  }

  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(listConversations, 250);
  });
  attachDialog.querySelector("[data-close]").addEventListener("click", () => attachDialog.close());
  attachDialog.addEventListener("close", () => opener?.focus?.());

  attachForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = attachForm.querySelector("input[name=conversation]:checked");
    if (!chosen) {
      showAttachError(gettext("Choose a conversation."));
      return;
    }
    const id = Number(chosen.value);
    const answer = await call("POST", `${constants.conversationsUrl}/${id}/documents`, { document_ids: [attaching.id] });
    if (!answer.ok) {
      showAttachError(answer.error);
      return;
    }
    attachDialog.close();
    const title = chosen.parentElement.textContent.trim();
    notice.replaceChildren(`${interpolate(gettext("Attached %(name)s to “%(title)s”."), { name: attaching.name, title }, true)} `);
    const link = document.createElement("a");
    link.href = constants.conversationUrl.replace("/0/", `/${id}/`);
    link.textContent = gettext("Open the conversation");
    notice.append(link);
  });

  load();
})();
