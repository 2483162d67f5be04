// A shared conversation: its replies rendered as the chat page renders them
// (static/js/markdown.js: sanitized Markdown, highlighted code, math). The
// messages came in the page as text; nothing in them runs.
"use strict";

(function () {
  async function copy(text, spoken, button) {
    await navigator.clipboard.writeText(text);
    const label = button.textContent;
    button.textContent = gettext("Copied");
    setTimeout(() => { button.textContent = label; }, 1500);
  }

  for (const content of document.querySelectorAll("#shared .bubble.assistant .content")) {
    window.SanjaiMarkdown.renderInto(content, content.textContent, true, copy);
  }
})();
