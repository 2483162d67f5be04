// A reply's sources (issue 20): the passages retrieved from the conversation's documents
// for its question, stored on the reply as `citations` ({n, document, page, heading,
// passage, score, cited}). They show as numbered chips under the reply, the ones the
// reply cites ("[n]" in its text) first and marked; the others were retrieved but not
// cited. A chip, or a marker "[n]" in the text, opens the passage in a dialog (Esc closes
// it). The passage is shown as text, never as HTML: it is a file's content.
"use strict";

window.SanjaiCitations = (function () {
  const dialog = document.getElementById("citation");
  let opener = null;  // where the focus goes back to when the dialog closes

  let shown = null;  // the citation the dialog shows
  const CONTEXT_PASSAGES = 5;  // it, and two on either side

  if (dialog) {
    dialog.querySelector("[data-close]").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => opener?.focus?.());
    document.getElementById("citation-in-document").addEventListener("click", () => inDocument(shown));
  }

  // The passages around the cited one, as the document has them; the cited one marked.
  async function inDocument(citation) {
    const context = document.getElementById("citation-context");
    const base = `${dialog.dataset.documentsUrl}/${citation.document_id}/passages`;
    const answer = await window.SanjaiUploads.call(
      "GET", `${base}?around=${citation.chunk_id}&limit=${CONTEXT_PASSAGES}`);
    context.replaceChildren();
    if (!answer.ok) {
      const note = document.createElement("p");
      note.className = "muted";
      note.textContent = gettext("This passage is no longer in your documents: the file was deleted or read again.");
      context.append(note);
    } else {
      for (const passage of answer.data.items) {
        const block = document.createElement(passage.id === citation.chunk_id ? "blockquote" : "p");
        block.className = passage.id === citation.chunk_id ? "citation-passage" : "citation-around";
        block.textContent = passage.text;  // the file's words: text, never HTML
        context.append(block);
      }
    }
    document.getElementById("citation-passage").hidden = true;
    document.getElementById("citation-in-document").hidden = true;
    context.hidden = false;
    context.querySelector(".citation-passage")?.scrollIntoView({ block: "center" });
  }

  function where(citation) {
    return citation.page ? interpolate(gettext("%(document)s, page %(page)s"), { document: citation.document, page: citation.page }, true) : citation.document;
  }

  // Cited ones first, each group in marker order.
  function ordered(citations) {
    return [...citations].sort((a, b) => Number(Boolean(b.cited)) - Number(Boolean(a.cited)) || a.n - b.n);
  }

  function open(citation, from) {
    if (!dialog) return;
    opener = from;
    document.getElementById("citation-title").textContent = interpolate(gettext("Source [%(n)s]: %(document)s"), { n: citation.n, document: citation.document }, true);
    const meta = [];
    if (citation.page) meta.push(interpolate(gettext("page %(page)s"), { page: citation.page }, true));
    if (citation.heading) meta.push(interpolate(gettext("under “%(heading)s”"), { heading: citation.heading }, true));
    meta.push(citation.cited ? gettext("cited in the reply") : gettext("retrieved for the question, not cited in the reply"));
    if (typeof citation.score === "number") {
      const score = citation.score.toLocaleString(document.documentElement.lang || undefined, { minimumFractionDigits: 3, maximumFractionDigits: 3 });
      meta.push(interpolate(gettext("score %(score)s"), { score }, true));
    }
    document.getElementById("citation-meta").textContent = meta.join(" · ");
    document.getElementById("citation-passage").textContent = citation.passage || "";
    document.getElementById("citation-passage").hidden = false;
    document.getElementById("citation-context").hidden = true;
    // An imported conversation's citations name no document of this server's.
    document.getElementById("citation-in-document").hidden = !(citation.document_id && citation.chunk_id);
    shown = citation;
    dialog.showModal();
    dialog.querySelector("[data-close]").focus();
  }

  function chipsFor(message) {
    const citations = message.citations || [];
    if (message.role !== "assistant" || !citations.length) return null;
    const wrap = document.createElement("div");
    wrap.className = "citations";
    wrap.setAttribute("role", "group");
    wrap.setAttribute("aria-label", gettext("Sources of this reply"));
    const label = document.createElement("span");
    label.className = "muted citations-label";
    label.textContent = gettext("Sources:");
    wrap.append(label);
    for (const citation of ordered(citations)) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = `citation-chip${citation.cited ? " cited" : ""}`;
      chip.dataset.n = citation.n;
      const number = document.createElement("span");
      number.className = "citation-n";
      number.textContent = citation.n;
      const name = document.createElement("span");
      name.className = "citation-where";
      name.textContent = where(citation);
      chip.append(number, name);
      chip.setAttribute("aria-label", interpolate(citation.cited
        ? gettext("Source %(n)s: %(where)s, cited. Show the passage") : gettext("Source %(n)s: %(where)s, not cited. Show the passage"),
      { n: citation.n, where: where(citation) }, true));
      chip.addEventListener("click", () => open(citation, chip));
      wrap.append(chip);
    }
    return wrap;
  }

  // "[n]" in the rendered reply becomes a button that opens source n (not inside code).
  function linkMarkers(content, message) {
    const byNumber = new Map((message.citations || []).map((citation) => [String(citation.n), citation]));
    if (!byNumber.size) return;
    const walker = document.createTreeWalker(content, NodeFilter.SHOW_TEXT, {
      acceptNode: (node) => (node.parentElement.closest("pre, code, button") ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT),
    });
    const nodes = [];
    while (walker.nextNode()) if (/\[\d{1,3}\]/.test(walker.currentNode.nodeValue)) nodes.push(walker.currentNode);
    for (const node of nodes) {
      const parts = node.nodeValue.split(/(\[\d{1,3}\])/);
      const pieces = parts.map((part) => {
        const citation = byNumber.get(part.slice(1, -1));
        if (!/^\[\d{1,3}\]$/.test(part) || !citation) return document.createTextNode(part);
        const marker = document.createElement("button");
        marker.type = "button";
        marker.className = "cite-ref";
        marker.textContent = part;
        marker.setAttribute("aria-label", interpolate(gettext("Source %(n)s: %(where)s"), { n: citation.n, where: where(citation) }, true));
        marker.addEventListener("click", () => open(citation, marker));
        return marker;
      });
      node.replaceWith(...pieces);
    }
  }

  return { chipsFor, linkMarkers };
})();
