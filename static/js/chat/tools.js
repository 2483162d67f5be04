// MCP tools on the page: each tool call of a reply as a collapsible block (the
// call with its arguments, the result, the time), the approve / refuse buttons
// of a call that waits for the owner, and the settings' choice of servers.
// Approvals go over the conversation's socket; the server checks the owner.
import { csrfToken } from "./http.js";
import { send } from "./socket.js";
import { chat, number } from "./ui.js";

const API = "/api/v1";

const STATUS = {
  awaiting_approval: () => gettext("waiting for your approval"),
  queued: () => gettext("queued"),
  running: () => gettext("running"),
  done: () => gettext("done"),
  error: () => gettext("failed"),
  refused: () => gettext("refused"),
};

// The reply's steps as <details> blocks, or null when it called no tool.
export function toolBlocksFor(message) {
  const steps = message.toolSteps || [];
  if (!steps.length) return null;
  const wrap = document.createElement("div");
  wrap.className = "tool-steps";
  for (const step of steps) wrap.append(stepBlock(step));
  return wrap;
}

// What a paused reply says while its tools run or wait for the owner.
export function toolWaitText(message) {
  const steps = message.toolSteps || [];
  return steps.some((step) => step.status === "awaiting_approval")
    ? gettext("waiting for your approval of a tool call")
    : gettext("running tools");
}

function stepBlock(step) {
  const block = document.createElement("details");
  block.className = `tool-step ${step.status}`;
  block.dataset.stepId = step.id;
  block.dataset.status = step.status;
  // Open while it needs the owner, so the question is in view.
  block.open = step.status === "awaiting_approval";
  const summary = document.createElement("summary");
  const name = document.createElement("code");
  name.textContent = `${step.server}.${step.tool}`;
  const state = document.createElement("span");
  state.className = "tool-status";
  const label = (STATUS[step.status] || (() => step.status))();
  state.textContent = step.duration_ms == null ? ` · ${label}` :
    ` · ${label} · ${interpolate(gettext("%(ms)s ms"), { ms: number(step.duration_ms) }, true)}`;
  summary.append(name, state);
  block.append(summary, section(gettext("Arguments"), JSON.stringify(step.arguments, null, 2)));
  if (step.status === "done") {
    block.append(section(step.is_error ? gettext("The tool reported an error") : gettext("Result"), step.result));
    if (step.truncated) block.append(note(gettext("The output was cut at the size limit.")));
  } else if (step.error) {
    block.append(section(gettext("Error"), step.error));
  }
  if (step.status === "awaiting_approval") block.append(approvalButtons(step));
  return block;
}

function section(title, text) {
  const part = document.createElement("div");
  part.className = "tool-part";
  const heading = document.createElement("div");
  heading.className = "meta";
  heading.textContent = title;
  const body = document.createElement("pre");
  body.textContent = text;
  part.append(heading, body);
  return part;
}

function note(text) {
  const line = document.createElement("div");
  line.className = "meta";
  line.textContent = text;
  return line;
}

function approvalButtons(step) {
  const row = document.createElement("div");
  row.className = "tool-approval";
  for (const [text, approve] of [[gettext("Approve"), true], [gettext("Refuse"), false]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = approve ? "primary" : "";
    button.textContent = text;
    button.addEventListener("click", () => {
      if (send({ action: "approve", step_id: step.id, approve })) {
        for (const other of row.querySelectorAll("button")) other.disabled = true;
      }
    });
    row.append(button);
  }
  return row;
}

// The settings' list of servers: ticked ones may be called by this conversation's replies.
export async function loadToolServers() {
  const box = document.getElementById("tool-servers");
  const id = chat.dataset.conversationId;
  if (!box || !id) return;
  const list = box.querySelector("[data-tool-server-list]");
  const status = box.querySelector("[data-tool-server-status]");
  const [servers, chosen] = await Promise.all([getJSON(`${API}/mcp-servers`), getJSON(`${API}/conversations/${id}/mcp-servers`)]);
  if (!Array.isArray(servers) || !Array.isArray(chosen)) return;
  box.hidden = servers.length === 0;
  list.replaceChildren(...servers.map((server) => serverChoice(server, chosen.includes(server.name), id, box, status)));
}

function serverChoice(server, checked, id, box, status) {
  const label = document.createElement("label");
  label.className = "checkbox";
  const input = document.createElement("input");
  input.type = "checkbox";
  input.value = server.name;
  input.checked = checked;
  input.addEventListener("change", async () => {
    const names = [...box.querySelectorAll("[data-tool-server-list] input:checked")].map((i) => i.value);
    const response = await fetch(`${API}/conversations/${id}/mcp-servers`, {
      method: "PUT", body: JSON.stringify({ servers: names }), credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    });
    const answer = await response.json();
    status.textContent = response.ok ? gettext("Saved.") : answer.detail;
  });
  const tools = server.tools.map((tool) => (tool.approval === "ask" ? interpolate(gettext("%(name)s (asks first)"), { name: tool.name }, true) : tool.name));
  const small = document.createElement("small");
  small.className = "muted";
  small.textContent = ` ${server.description ? `${server.description}: ` : ""}${tools.join(", ")}`;
  label.append(input, ` ${server.name}`, small);
  return label;
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  return response.ok ? response.json() : null;
}
