// Folders in the sidebar (chat/services/folders.py), through the REST API with the
// browser's session: "+ New folder" and a folder's ✎ open one dialog (name and
// the preset new chats in it start from), ✕ deletes it (its conversations stay,
// back in the main list). A conversation moves by drag and drop onto a folder (or
// back onto the main list), or, without a mouse, with its ⇄ button and a dialog.
// After each change chat.js reads the list again ("sidebar:refresh").
"use strict";

(function () {
  const sidebar = document.getElementById("sidebar");
  const newButton = document.getElementById("folder-new");
  const editDialog = document.getElementById("folder-edit");
  const moveDialog = document.getElementById("folder-move");
  if (!sidebar || !newButton || !editDialog || !moveDialog) return;
  const foldersUrl = newButton.dataset.foldersUrl;
  const conversationsUrl = newButton.dataset.conversationsUrl;
  const editForm = document.getElementById("folder-edit-form");
  const moveForm = document.getElementById("folder-move-form");
  let editing = null;  // the folder being renamed: {id, name, presetId}; null: a new one
  let moving = null;  // the conversation item being moved by the dialog
  let opener = null;  // where the focus goes back to when a dialog closes

  const { csrfToken } = window.SanjaiHttp;  // static/js/http.js

  // The API's errors are {"detail": "..."}; the message names what is allowed.
  async function call(method, url, body) {
    let response;
    try {
      response = await fetch(url, {
        method,
        body: body === undefined ? undefined : JSON.stringify(body),
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
        credentials: "same-origin",
      });
    } catch (error) {
      return gettext("The server could not be reached.");
    }
    if (response.ok) return null;
    const answer = await response.json().catch(() => ({}));
    return answer.detail || interpolate(gettext("The server answered %(status)s."), { status: response.status }, true);
  }

  function refresh() {
    document.dispatchEvent(new Event("sidebar:refresh"));
  }

  function showError(element, text) {
    element.textContent = text || "";
    element.hidden = !text;
  }

  function open(dialog, from) {
    opener = from;
    dialog.showModal();
  }

  for (const dialog of [editDialog, moveDialog]) {
    dialog.querySelector("[data-close]").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => opener?.focus?.());
  }

  // ---- Make, rename, delete --------------------------------------------------------
  function openEditor(folder, from) {
    editing = folder;
    document.getElementById("folder-edit-title").textContent = folder
      ? interpolate(gettext("Rename “%(name)s”"), { name: folder.name }, true) : gettext("New folder");
    editForm.elements.name.value = folder ? folder.name : "";
    editForm.elements.preset_id.value = folder ? folder.presetId : "";
    showError(document.getElementById("folder-edit-error"), "");
    open(editDialog, from);
    editForm.elements.name.select();
  }

  newButton.addEventListener("click", () => openEditor(null, newButton));

  editForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const presetId = editForm.elements.preset_id.value;
    const body = { name: editForm.elements.name.value, preset_id: presetId ? Number(presetId) : null };
    const error = editing
      ? await call("PATCH", `${foldersUrl}/${editing.id}`, body)
      : await call("POST", foldersUrl, body);
    // Refused: the dialog stays open with what was typed, and says why.
    showError(document.getElementById("folder-edit-error"), error);
    if (error) return;
    editDialog.close();
    refresh();
  });

  function folderOf(element) {
    const section = element.closest("[data-folder-id]");
    return section && { id: section.dataset.folderId, name: section.dataset.name, presetId: section.dataset.presetId };
  }

  async function deleteFolder(folder) {
    const question = interpolate(gettext("Delete the folder “%(name)s”? Its conversations are kept: they go back to the main list."), { name: folder.name }, true);
    if (!confirm(question)) return;
    const error = await call("DELETE", `${foldersUrl}/${folder.id}`);
    if (error) alert(error); else refresh();
  }

  sidebar.addEventListener("click", (event) => {
    const action = event.target.closest("[data-folder-action]");
    if (action) {
      const folder = folderOf(action);
      if (action.dataset.folderAction === "edit") openEditor(folder, action);
      if (action.dataset.folderAction === "delete") deleteFolder(folder);
      return;
    }
    const move = event.target.closest("button[data-action='move']");
    if (move) openMover(move.closest(".conversation-item"), move);
  });

  // ---- Moving a conversation ----------------------------------------------------------
  async function moveTo(item, folderId) {
    if ((item.dataset.folder || "") === folderId) return null;
    const error = await call("PATCH", `${conversationsUrl}/${item.dataset.id}`, { folder_id: folderId ? Number(folderId) : null });
    if (!error) refresh();
    return error;
  }

  function openMover(item, from) {
    moving = item;
    const choice = moveForm.elements.folder;
    const options = [new Option(gettext("No folder (the main list)"), "")];
    for (const section of sidebar.querySelectorAll("[data-folder-id]")) {
      options.push(new Option(section.dataset.name, section.dataset.folderId));
    }
    choice.replaceChildren(...options);
    choice.value = item.dataset.folder || "";
    const name = item.querySelector(".conversation-link").textContent;
    document.getElementById("folder-move-title").textContent = interpolate(gettext("Move “%(name)s”"), { name }, true);
    showError(document.getElementById("folder-move-error"), options.length > 1 ? "" : gettext("You have no folders yet: make one with “+ New folder”."));
    open(moveDialog, from);
    choice.focus();
  }

  moveForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = await moveTo(moving, moveForm.elements.folder.value);
    showError(document.getElementById("folder-move-error"), error);
    if (!error) moveDialog.close();
  });

  // Drag and drop: an item onto a folder, or onto the main list to take it out.
  let dragged = null;
  sidebar.addEventListener("dragstart", (event) => {
    const item = event.target.closest?.(".conversation-item[draggable='true']");
    if (!item) return;
    dragged = item;
    event.dataTransfer.effectAllowed = "move";
    event.dataTransfer.setData("text/plain", item.dataset.id);
    sidebar.classList.add("dragging");
  });
  sidebar.addEventListener("dragend", () => {
    dragged = null;
    sidebar.classList.remove("dragging");
    for (const target of sidebar.querySelectorAll(".drop-over")) target.classList.remove("drop-over");
  });
  sidebar.addEventListener("dragover", (event) => {
    const target = dragged && event.target.closest?.("[data-drop-folder]");
    if (!target) return;
    event.preventDefault();  // allows the drop
    event.dataTransfer.dropEffect = "move";
    for (const other of sidebar.querySelectorAll(".drop-over")) if (other !== target) other.classList.remove("drop-over");
    target.classList.add("drop-over");
  });
  sidebar.addEventListener("drop", async (event) => {
    const target = dragged && event.target.closest?.("[data-drop-folder]");
    if (!target) return;
    event.preventDefault();
    const item = dragged;
    sidebar.classList.remove("dragging");
    const error = await moveTo(item, target.dataset.dropFolder);
    if (error) alert(error);
  });

  // "New chat in this folder": its preset is chosen as if clicked (presets.js).
  const chat = document.getElementById("chat");
  const preset = chat?.dataset.startPreset;
  if (preset && !chat.dataset.conversationId && chat.dataset.preset !== preset) {
    document.querySelector(`#preset-start [data-preset="${CSS.escape(preset)}"]`)?.click();
  }
})();
