// Documents: the composer's chips (static/js/attachments.js) and a reply's sources
// (static/js/citations.js), classic scripts that run before this module.
import { announce, chat, composer, showBanner } from "./ui.js";

export const citations = window.SanjaiCitations;
export let attachments = null;  // set up by setUpDocuments(); null where the page has no chips

export function setUpDocuments() {
  const list = document.getElementById("attachments");
  if (!window.SanjaiAttachments || !list) return;
  attachments = window.SanjaiAttachments.setUp({
    list,
    composer,
    fileInput: document.getElementById("attach-input"),
    attachButton: document.getElementById("attach"),
    documentsUrl: composer.dataset.documentsUrl,
    conversationsUrl: composer.dataset.conversationsUrl,
    conversationId: () => chat.dataset.conversationId,
    showBanner,
    announce,
  });
}
