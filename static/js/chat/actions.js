// The buttons under a message: versions (‹ n/m ›), copy, read aloud, rating,
// regenerate, edit, remember. `rerender(message)` draws the message again
// (render.js passes its own render, which draws these buttons in turn).
import { feedbackFor } from "./feedback.js";
import { send } from "./socket.js";
import { activeReply, lastOf } from "./store.js";
import { announce, button, copyText, input, showBanner } from "./ui.js";

export function actionsFor(message, rerender) {
  const actions = document.createElement("div");
  actions.className = "actions";
  const finished = !["pending", "streaming", "tool_wait"].includes(message.status);
  const busy = activeReply() !== null;
  const versions = branchNav(message, busy);
  if (versions) actions.append(versions);
  if (message.role === "assistant" && finished && message.content) {
    actions.append(button(gettext("Copy"), () => copyText(message.content, gettext("Reply copied.")), gettext("Copy this reply")));
  }
  if (message.role === "assistant" && finished && message.content) {
    const reading = window.SanjaiVoice && window.SanjaiVoice.readAloudButton(message);
    if (reading) actions.append(reading);
  }
  if (message.role === "assistant" && finished && message.id) actions.append(feedbackFor(message, rerender));
  if (!busy && message.role === "assistant" && finished && message === lastOf("assistant")) {
    actions.append(button(gettext("Regenerate"), () => send({ action: "regenerate" }), gettext("Regenerate the last reply")));
  }
  if (!busy && message.role === "user" && message === lastOf("user")) {
    actions.append(button(gettext("Edit"), () => startEdit(message, rerender), gettext("Edit your last message and resend")));
  }
  const remember = window.SanjaiMemory && window.SanjaiMemory.rememberButton(message);
  if (remember) actions.append(remember);
  return actions;
}

// ---- Branches: "‹ n/m ›" on a message with alternatives (a regenerated reply,
// an edited question). Switching is stored, so a reload shows the same branch;
// the server then announces it and every open page asks for the branch again.
function branchNav(message, busy) {
  const siblings = message.siblings || [];
  if (siblings.length < 2) return null;
  const index = siblings.indexOf(message.id);
  const nav = document.createElement("span");
  nav.className = "branch-nav";
  const reply = message.role === "assistant";
  const go = (to) => () => {
    if (send({ action: "switch", message_id: siblings[to] })) {
      announce(interpolate(gettext("Showing version %(number)s of %(count)s."), { number: to + 1, count: siblings.length }, true));
    }
  };
  const previous = button("‹", go(index - 1), reply ? gettext("Previous version of this reply") : gettext("Previous version of this message"));
  const next = button("›", go(index + 1), reply ? gettext("Next version of this reply") : gettext("Next version of this message"));
  previous.disabled = busy || index <= 0;
  next.disabled = busy || index >= siblings.length - 1;
  const position = document.createElement("span");
  position.className = "branch-position";
  position.textContent = `${index + 1}/${siblings.length}`;
  nav.append(previous, position, next);
  return nav;
}

// Your last message, in an edit box in its bubble: saved, it is resent as a new version.
export function startEdit(message, rerender) {
  const el = message.el;
  const box = document.createElement("div");
  box.className = "edit-box";
  const area = document.createElement("textarea");
  area.value = message.content;
  area.rows = 3;
  area.setAttribute("aria-label", gettext("Edit your message"));
  const row = document.createElement("div");
  row.className = "actions";
  row.append(
    button(gettext("Save and resend"), () => {
      if (!area.value.trim()) return showBanner(gettext("The message is empty."), "info");
      send({ action: "edit", content: area.value });
    }),
    button(gettext("Cancel"), () => rerender(message)),
  );
  box.append(area, row);
  el.replaceChildren(box);
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault(); // Esc leaves the edit box; it does not also stop a reply
      rerender(message);
      input.focus();
    } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      row.querySelector("button").click();
    }
  });
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
}
