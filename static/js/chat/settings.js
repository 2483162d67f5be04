// The conversation's settings panel: system prompt, model, memory and the
// generation parameters, filled from each snapshot and saved over HTTP.
import { postJSON } from "./http.js";
import { loadToolServers } from "./tools.js";
import { chat } from "./ui.js";

export const settings = document.getElementById("settings");

export function fillSettings(conversation) {
  settings.elements.system_prompt.value = conversation.system_prompt || "";
  if (conversation.model) settings.elements.model.value = conversation.model;
  if (typeof conversation.use_memory === "boolean") settings.elements.use_memory.checked = conversation.use_memory;
  for (const [name, value] of Object.entries(conversation.params || {})) {
    if (settings.elements[name]) settings.elements[name].value = value;
  }
}

// The model this page sends to: the new chat's choice, else the conversation's.
export function currentModel() {
  const startModel = document.getElementById("start-model");
  if (startModel && !chat.dataset.conversationId) return startModel.value;
  return settings.elements.model.value;
}

export function setUpSettings() {
  const toggle = document.getElementById("settings-toggle");
  const status = document.getElementById("settings-status");
  toggle.addEventListener("click", () => {
    settings.hidden = !settings.hidden;
    toggle.setAttribute("aria-expanded", String(!settings.hidden));
    if (!settings.hidden) loadToolServers();  // the servers may have changed since
  });

  settings.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      system_prompt: settings.elements.system_prompt.value,
      model: settings.elements.model.value,
      use_memory: settings.elements.use_memory.checked,
    };
    for (const name of ["max_new_tokens", "temperature", "top_p", "repetition_penalty"]) {
      body[name] = Number(settings.elements[name].value);
    }
    const response = await postJSON(settings.dataset.url, body);
    const answer = await response.json();
    status.textContent = response.ok ? gettext("Saved.") : answer.error;
  });
}
