// The chat page, as ES modules (static/js/chat/*.js; no framework and no build
// step): one websocket per open conversation, replies streamed in as they are
// generated. Everything shown comes from the server (a snapshot on every
// (re)connect, then events), so a reload or a dropped connection never loses anything.
//
// The home page is a new chat with no conversation yet: its first message is
// posted over HTTP, which stores the conversation with it, and the page then
// becomes that conversation's page (its URL, its socket) without a reload (chat/start.js).
//
// A module runs after the classic scripts before it in the page (it is deferred, and
// deferred scripts run in document order), so window.SanjaiHttp, SanjaiAttachments,
// SanjaiCitations, SanjaiMarkdown, SanjaiMemory and SanjaiVoice are there when it starts.
// Words shown go through Django's JavaScript catalog (gettext, interpolate: /jsi18n/,
// templates/base.html); the server's own refusals (answer.error) come as it words them.
import { setUpComposer } from "./chat/composer.js";
import { setUpDocuments } from "./chat/documents.js";
import { listen } from "./chat/events.js";
import { watchModel } from "./chat/model-status.js";
import { renderServerReplies } from "./chat/render.js";
import { setUpSettings } from "./chat/settings.js";
import { setUpSharing } from "./chat/share.js";
import { setUpShortcuts } from "./chat/shortcuts.js";
import { setUpSidebar } from "./chat/sidebar.js";
import { watchQuietReplies } from "./chat/socket.js";
import { chat } from "./chat/ui.js";

setUpSidebar();
setUpShortcuts();
if (chat) {
  setUpDocuments();
  setUpComposer();
  setUpSharing();
  setUpSettings();
  renderServerReplies();
  if (chat.dataset.conversationId) listen();
  watchQuietReplies();
  watchModel();
}
