// Memory from the chat page (chat/services/memory.py): a message of yours that
// reads like a fact about you ("I write Python", "My name is Ana", "Always answer
// in French") gets a "Remember" action. It opens the text in a small editor
// under the message; nothing is kept until you press "Keep in memory". The
// facts are listed, and forgotten, on the profile page.
"use strict";

window.SanjaiMemory = (function () {
  const chat = document.getElementById("chat");
  // The longest fact the server keeps (chat/services/memory.py), from the page's constants.
  const MAX_CHARS = JSON.parse(document.getElementById("page-constants").textContent).memoryFactChars;
  // First-person statements and standing instructions: what a memory is for, in the
  // interface's languages (English, German, French, Spanish).
  const LOOKS_LIKE_A_FACT = new RegExp("^(j['’]|(i|i'm|i am|i've|my|call me|please always|always|never|from now on" +
    "|ich|mein|meine|nenn mich|immer|nie|ab jetzt" +
    "|je|mon|ma|mes|appelle-moi|toujours|jamais|désormais" +
    "|yo|mi|mis|llámame|siempre|nunca|a partir de ahora)(?![\\p{L}]))", "iu");

  function say(text) {
    const announcer = document.getElementById("announcer");
    if (announcer) announcer.textContent = text;
  }

  function rememberButton(message) {
    if (!chat || !chat.dataset.memoryUrl || message.role !== "user" || !message.el) return null;
    if (!LOOKS_LIKE_A_FACT.test((message.content || "").trim())) return null;
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = gettext("Remember");
    button.setAttribute("aria-label", gettext("Keep this in your memory"));
    button.addEventListener("click", () => openEditor(message));
    return button;
  }

  function openEditor(message) {
    if (message.el.querySelector(".remember")) return;
    const form = document.createElement("form");
    form.className = "remember";
    const label = document.createElement("label");
    label.textContent = gettext("Keep in your memory (every new reply sees it; you can forget it on your profile)");
    const text = document.createElement("textarea");
    text.rows = 2;
    text.maxLength = MAX_CHARS;
    text.value = message.content.trim().slice(0, MAX_CHARS);
    label.append(text);
    const save = document.createElement("button");
    save.type = "submit";
    save.className = "primary";
    save.textContent = gettext("Keep in memory");
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = gettext("Cancel");
    const status = document.createElement("span");
    status.className = "muted";
    status.setAttribute("role", "status");
    cancel.addEventListener("click", () => form.remove());
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      save.disabled = true;
      let answer;
      try {
        const response = await window.SanjaiHttp.postJSON(chat.dataset.memoryUrl, { text: text.value });
        answer = response.ok ? null : await response.json();
      } catch (error) {
        answer = { error: gettext("The server could not be reached; nothing was kept.") };
      }
      save.disabled = false;
      if (answer) {
        status.textContent = answer.error;  // the text stays in the box
        return;
      }
      form.remove();
      say(gettext("Kept in your memory."));
      message.el.querySelector(".actions")?.append(Object.assign(document.createElement("span"), {
        className: "muted remembered", textContent: gettext("Kept in memory"),
      }));
    });
    form.append(label, save, cancel, status);
    message.el.append(form);
    text.focus();
  }

  return { rememberButton };
})();
