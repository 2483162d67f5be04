// Starting a new chat from a preset (chat/services/presets.py). On the empty chat
// page a click on a preset's button chooses it, and so does "/" in the empty
// message box: a list of the presets, narrowed by what follows the "/", chosen
// with the arrows and Enter (or a click). The choice goes with the first message
// as its model, "preset:<slug>" (chat.js), and the new conversation copies the
// preset's system prompt, model and settings.
"use strict";

(function () {
  const chat = document.getElementById("chat");
  const group = document.getElementById("preset-start");
  const menu = document.getElementById("slash-menu");
  const input = document.getElementById("input");
  if (!chat || !group || !menu || !input) return;
  const buttons = [...group.querySelectorAll("[data-preset]")];
  let shown = [];
  let selected = 0;

  function choose(slug) {
    const again = chat.dataset.preset === slug;
    if (again) delete chat.dataset.preset; else chat.dataset.preset = slug;
    for (const button of buttons) {
      button.setAttribute("aria-pressed", String(!again && button.dataset.preset === slug));
    }
    const chosen = buttons.find((button) => button.dataset.preset === slug);
    input.placeholder = again || !chosen
      ? gettext("Message SanjAI — Enter to send, Shift+Enter for a new line")
      : interpolate(gettext("Message %(preset)s — Enter to send"), { preset: chosen.textContent.trim() }, true);
  }

  for (const button of buttons) {
    button.addEventListener("click", () => {
      choose(button.dataset.preset);
      input.focus();
    });
  }

  function closeMenu() {
    menu.hidden = true;
    shown = [];
    input.removeAttribute("aria-activedescendant");
  }

  function renderMenu() {
    const words = input.value.slice(1).trim().toLowerCase();
    shown = buttons.filter((button) => button.textContent.toLowerCase().includes(words));
    selected = Math.min(selected, Math.max(shown.length - 1, 0));
    menu.replaceChildren(...shown.map((button, index) => {
      const item = document.createElement("li");
      item.id = `slash-${index}`;
      item.setAttribute("role", "option");
      item.setAttribute("aria-selected", String(index === selected));
      item.textContent = button.textContent.trim();
      if (button.title) {
        const about = document.createElement("small");
        about.textContent = ` — ${button.title}`;
        item.append(about);
      }
      item.addEventListener("mousedown", (event) => {
        event.preventDefault();  // keep the focus in the box
        pick(index);
      });
      return item;
    }));
    if (!shown.length) {
      const none = document.createElement("li");
      none.className = "muted";
      none.textContent = gettext("No preset has that name.");
      menu.append(none);
    }
    menu.hidden = false;
    if (shown.length) input.setAttribute("aria-activedescendant", `slash-${selected}`);
  }

  function pick(index) {
    const button = shown[index];
    if (!button) return;
    if (chat.dataset.preset !== button.dataset.preset) choose(button.dataset.preset);
    input.value = "";
    closeMenu();
  }

  input.addEventListener("input", () => {
    if (input.value.startsWith("/") && !input.value.includes("\n") && !chat.dataset.conversationId) {
      renderMenu();
    } else if (!menu.hidden) {
      closeMenu();
    }
  });

  // Capture, on the form: before chat.js's own keys (Enter sends) while the list is open.
  document.getElementById("composer").addEventListener("keydown", (event) => {
    if (menu.hidden || event.target !== input) return;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const step = event.key === "ArrowDown" ? 1 : -1;
      selected = (selected + step + shown.length) % Math.max(shown.length, 1);
      renderMenu();
    } else if (event.key === "Enter" && !event.shiftKey) {
      if (!shown.length) {  // no preset by that name: the text is a message ("/usr/bin is ...")
        closeMenu();
        return;
      }
      event.preventDefault();
      event.stopPropagation();
      pick(selected);
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      closeMenu();
    }
  }, true);
})();
