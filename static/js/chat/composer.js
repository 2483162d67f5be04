// The composer and the keys that act on the reply: Enter sends, ↑ in an empty
// box edits your last message, Esc (or Stop) stops the reply being written.
import { startEdit } from "./actions.js";
import { attachments } from "./documents.js";
import { render } from "./render.js";
import { send } from "./socket.js";
import { startConversation } from "./start.js";
import { activeReply, lastOf, pending } from "./store.js";
import { announce, chat, composer, hideBanner, input, showBanner, stopButton } from "./ui.js";

export function setUpComposer() {
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) {
      showBanner(gettext("Type a message first."), "info");
      input.focus();
      return;
    }
    if (activeReply()) return;
    const still = attachments && attachments.uploading();
    if (still) {
      showBanner(interpolate(gettext("%(name)s is still uploading: send once its chip says so. Your text stays in the box."), { name: still }, true), "info");
      return;
    }
    const documents = attachments ? attachments.pendingIds() : [];
    const payload = documents.length ? { action: "send", content: text, documents } : { action: "send", content: text };
    if (!chat.dataset.conversationId) {
      startConversation(text, documents);
    } else if (send(payload)) {
      pending.text = text;
      pending.documents = documents;
      input.value = "";
      hideBanner();
    }
  });

  input.addEventListener("keydown", (event) => {
    const plain = !event.shiftKey && !event.ctrlKey && !event.metaKey && !event.altKey && !event.isComposing;
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    } else if (event.key === "ArrowUp" && plain && input.value === "" && !activeReply()) {
      const mine = lastOf("user");
      if (mine && mine.el) {
        event.preventDefault();
        startEdit(mine, render);
      }
    }
  });

  // Esc stops the reply being written, wherever the focus is (an open dialog,
  // drawer or edit box takes Esc for itself first).
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || event.defaultPrevented || document.querySelector("dialog[open]")) return;
    const reply = activeReply();
    if (reply) {
      event.preventDefault();
      send({ action: "cancel", message_id: reply.id });
      announce(gettext("Stopping the reply."));
    }
  });

  stopButton.addEventListener("click", () => {
    const reply = activeReply();
    if (reply) send({ action: "cancel", message_id: reply.id });
  });
}
