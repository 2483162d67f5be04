// The home page's first message: posted over HTTP, which stores the conversation
// with it; the page then becomes that conversation's page without a reload.
import { attachments } from "./documents.js";
import { listen } from "./events.js";
import { postJSON } from "./http.js";
import { refreshControls } from "./render.js";
import { settings } from "./settings.js";
import { setShareUrl } from "./share.js";
import { refreshSidebar } from "./sidebar.js";
import { pending } from "./store.js";
import { chat, hideBanner, input, showBanner, title } from "./ui.js";

export async function startConversation(text, documents) {
  if (pending.starting) return;
  pending.starting = true;
  input.value = "";
  hideBanner();
  refreshControls();
  let answer;
  try {
    const startModel = document.getElementById("start-model");
    const preset = chat.dataset.preset;  // chosen on the empty page (presets.js)
    const model = preset ? `preset:${preset}` : startModel?.value;
    const body = model ? { content: text, model } : { content: text };
    if (chat.dataset.folderId) body.folder_id = Number(chat.dataset.folderId);  // folders.js
    if (documents.length) body.documents = documents;
    const response = await postJSON(chat.dataset.startUrl, body);
    answer = await response.json();
  } catch (error) {
    answer = { error: gettext("The server could not be reached.") };
  }
  pending.starting = false;
  if (answer.conversation && documents.length) attachments.sent(documents);
  if (answer.conversation) enterConversation(answer.conversation);
  if (answer.error) {
    // Refused with nothing stored: the text goes back in the box.
    if (!answer.conversation && !input.value) input.value = text;
    showBanner(answer.error, answer.conversation ? "" : "info");
  }
  refreshControls();
  input.focus();
}

// The page becomes the new conversation's own page: its URL (no reload), its
// socket (whose snapshot brings the stored message and reply), its tools.
function enterConversation(conversation) {
  chat.dataset.conversationId = conversation.id;
  chat.dataset.wsPath = conversation.ws_path;
  history.replaceState(null, "", conversation.url);
  title.textContent = conversation.title || gettext("New conversation");
  document.title = `${title.textContent} · SanjAI`;
  settings.dataset.url = conversation.settings_url;
  document.getElementById("export-json").href = `${conversation.export_url}?format=json`;
  document.getElementById("export-md").href = `${conversation.export_url}?format=md`;
  setShareUrl(conversation.share_url);
  for (const tool of chat.querySelectorAll(".chat-tools [hidden]")) tool.hidden = false;
  document.getElementById("preset-start")?.remove();  // the conversation has begun
  const startModel = document.getElementById("start-model");
  if (startModel) {  // chosen for this conversation: from now on its settings panel says so
    settings.elements.model.value = startModel.value;
    document.getElementById("start-model-label").hidden = true;
  }
  listen();
  refreshSidebar();
}
