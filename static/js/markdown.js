// Replies as sanitized Markdown, with highlighted code and math: one renderer
// for every page that shows them (the chat page, a shared conversation).
// No framework and no build step: it sets window.SanjaiMarkdown.
"use strict";

(function () {
  // ---- Markdown, sanitized -------------------------------------------------
  // Model output and user text are untrusted: Markdown becomes HTML only
  // through DOMPurify, with no images, media, forms or styles (nothing that
  // could run script or load remote content), no id, class or style (nothing
  // that could dress up as, or be styled as, the app's own interface), and
  // links open safely. Highlighting, copy buttons and math are added by this
  // page to the sanitized result, never taken from the model's markup.
  const PURIFY = {
    FORBID_TAGS: ["img", "picture", "video", "audio", "source", "iframe", "object", "embed",
      "form", "input", "button", "textarea", "select", "style", "link", "meta", "svg", "math"],
    FORBID_ATTR: ["style", "class", "id", "srcset", "background", "poster"],
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
  };
  // highlight.js output: its own token spans around text it escaped.
  const HLJS_PURIFY = { ALLOWED_TAGS: ["span"], ALLOWED_ATTR: ["class"], RETURN_DOM_FRAGMENT: true };
  // KaTeX output (MathML only: no inline styles, no fonts, so the CSP stays as it is).
  // `semantics` and `annotation` (the TeX source, not displayed) are DOMPurify's
  // "disallowed MathML" by default; they are plain containers here.
  const MATH_PURIFY = {
    USE_PROFILES: { mathMl: true },
    ADD_TAGS: ["semantics", "annotation"],
    FORBID_ATTR: ["style", "class", "id", "href", "xlink:href"],
    RETURN_DOM_FRAGMENT: true,
  };
  const KATEX_OPTIONS = {
    output: "mathml", throwOnError: true, trust: false, strict: "ignore", maxSize: 50, maxExpand: 1000,
  };
  let purifyHooked = false;
  let markdown = null; // a marked instance with the math extension
  let mathFound = null; // the TeX of one render, by placeholder: [{tex, display, raw}]
  let mathNonce = "";

  // Math is cut out by marked's tokenizer (so code spans and blocks keep their
  // `$`, and `_` or `*` inside math never become emphasis) and left as empty
  // placeholders that only this render can name; the TeX goes to KaTeX after
  // the Markdown has been sanitized.
  function mathPlaceholder(token, tag) {
    mathFound.push({ tex: token.text, display: token.display, raw: token.raw });
    return `<${tag} data-math="${mathNonce}-${mathFound.length - 1}"></${tag}>`;
  }

  const INLINE_MATH = [
    [/^\$\$(?!\$)([\s\S]+?)\$\$/, true],
    [/^\\\[([\s\S]+?)\\\]/, true],
    [/^\\\(([\s\S]+?)\\\)/, false],
    // $x$, but not prices: no space just inside either dollar, no digit just after.
    [/^\$(?![\s$])((?:\\[\s\S]|[^\\$])+?)(?<![\s\\])\$(?!\d)/, false],
  ];

  const mathExtensions = [
    {
      name: "blockMath",
      level: "block",
      start(src) { return src.match(/^ {0,3}(?:\$\$|\\\[)/m)?.index; },
      tokenizer(src) {
        // Up to the first closing delimiter only: `$$a$$ b $$c$$` is two inline formulas, not one.
        const match = /^ {0,3}(?:\$\$((?:(?!\$\$)[\s\S])+?)\$\$|\\\[((?:(?!\\\])[\s\S])+?)\\\])[ \t]*(?:\n+|$)/.exec(src);
        if (match) return { type: "blockMath", raw: match[0], text: (match[1] ?? match[2]).trim(), display: true };
        return undefined;
      },
      renderer(token) { return mathPlaceholder(token, "div"); },
    },
    {
      name: "inlineMath",
      level: "inline",
      start(src) { return src.match(/\$|\\[([]/)?.index; },
      tokenizer(src) {
        for (const [pattern, display] of INLINE_MATH) {
          const match = pattern.exec(src);
          if (match) return { type: "inlineMath", raw: match[0], text: match[1].trim(), display };
        }
        return undefined;
      },
      renderer(token) { return mathPlaceholder(token, "span"); },
    },
  ];

  function setUpMarkdown() {
    window.DOMPurify.addHook("uponSanitizeElement", (node, data) => {
      // marked names a fenced block's language in a class, which is removed
      // below: keep the name as data for the highlighter.
      if (data.tagName === "code" && node.getAttribute) {
        const language = /(?:^|\s)language-([\w+#.-]{1,40})(?:\s|$)/.exec(node.getAttribute("class") || "");
        if (language) node.setAttribute("data-language", language[1]);
      }
    });
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    });
    markdown = new window.marked.Marked({ gfm: true, breaks: true, async: false, extensions: mathExtensions });
    purifyHooked = true;
  }

  // Fills `target` with `text` rendered as sanitized Markdown, then adds
  // highlighting, a copy button on each code block and math. `settled`: the
  // text is final (worth guessing the language of an unlabelled block).
  // `copy(text, spoken, button)`: what a code block's Copy button does.
  function renderMarkdownInto(target, text, settled, copy) {
    if (!window.marked || !window.DOMPurify) {
      target.replaceChildren();
      const plain = document.createElement("div");
      plain.className = "plain-text";
      plain.textContent = text;
      target.append(plain);
      return;
    }
    if (!purifyHooked) setUpMarkdown();
    const found = [];
    mathFound = found;
    mathNonce = Math.random().toString(36).slice(2);
    let html;
    try {
      html = markdown.parse(text);
    } finally {
      mathFound = null;
    }
    target.innerHTML = window.DOMPurify.sanitize(html, PURIFY);
    renderMath(target, found);
    for (const pre of target.querySelectorAll("pre")) decorateCode(pre, settled, copy);
  }

  function renderMath(root, found) {
    for (const holder of root.querySelectorAll("[data-math]")) {
      const [nonce, index] = holder.dataset.math.split("-");
      const math = nonce === mathNonce ? found[Number(index)] : undefined;
      if (!math) continue; // the model's own data-math attribute: left as it is
      const out = document.createElement(holder.tagName === "DIV" ? "div" : "span");
      out.className = math.display ? "math-display" : "math-inline";
      try {
        if (!window.katex) throw new Error("KaTeX is not loaded");
        const mathml = window.katex.renderToString(math.tex, { ...KATEX_OPTIONS, displayMode: math.display });
        out.append(window.DOMPurify.sanitize(mathml, MATH_PURIFY));
      } catch {
        out.className = "math-source"; // not valid TeX (or no KaTeX): show what was written
        out.textContent = math.raw.trim();
      }
      holder.replaceWith(out);
    }
  }

  function decorateCode(pre, settled, copy) {
    const code = pre.querySelector(":scope > code");
    if (!code) return;
    const text = code.textContent;
    const language = code.dataset.language || "";
    if (window.hljs) {
      let result = null;
      if (language && window.hljs.getLanguage(language)) {
        result = window.hljs.highlight(text, { language, ignoreIllegals: true });
      } else if (!language && settled && text.length < 20000) {
        result = window.hljs.highlightAuto(text); // too slow to redo on every streamed frame
      }
      if (result) {
        code.replaceChildren(window.DOMPurify.sanitize(result.value, HLJS_PURIFY));
        code.classList.add("hljs");
      }
    }
    const block = document.createElement("div");
    block.className = "code-block";
    const head = document.createElement("div");
    head.className = "code-head";
    const label = document.createElement("span");
    label.className = "code-lang";
    label.textContent = language || gettext("code");
    // Exactly the block's text: marked ends a block with a newline the fence did not have.
    const copyButton = document.createElement("button");
    copyButton.type = "button";
    copyButton.textContent = gettext("Copy");
    copyButton.className = "copy-code";
    copyButton.setAttribute("aria-label", language
      ? interpolate(gettext("Copy this %(language)s block"), { language }, true) : gettext("Copy this code block"));
    copyButton.addEventListener("click", () => copy(text.replace(/\n$/, ""), gettext("Code copied."), copyButton));
    head.append(label, copyButton);
    pre.replaceWith(block);
    block.append(head, pre);
  }

  window.SanjaiMarkdown = { renderInto: renderMarkdownInto };
})();
