// ESLint for the browser JavaScript in static/js (`make lint-js`, run by `make test`).
// static/vendor/ holds third-party builds and is not ours to lint.
import js from "@eslint/js";
import globals from "globals";

// What one page's scripts put on window for the others (each file's `window.X = ...`)
// and the vendor builds that templates/chat/_markdown_scripts.html loads first.
const shared = {
  SanjaiHttp: "readonly",
  SanjaiMarkdown: "readonly",
  SanjaiMemory: "readonly",
  SanjaiVoice: "readonly",
  marked: "readonly",
  DOMPurify: "readonly",
  hljs: "readonly",
  katex: "readonly",
  // Django's JavaScript catalog (/jsi18n/, loaded first by templates/base.html).
  gettext: "readonly",
  ngettext: "readonly",
  interpolate: "readonly",
};

// ES modules: the chat page's entry and the modules it imports.
const modules = ["static/js/chat.js", "static/js/chat/**/*.js"];

const rules = {
  // Since ESLint 9 the rule also reports an unused `catch (error)`. Those catches
  // turn a failure (server unreachable, storage off, no microphone) into a message
  // or a fallback on purpose; the name costs nothing and keeps them uniform.
  "no-unused-vars": ["error", { caughtErrors: "none" }],
};

export default [
  { ignores: ["static/vendor/**", "node_modules/**", "site/**"] },
  js.configs.recommended,
  {
    files: ["static/js/**/*.js"],
    ignores: ["static/js/sw.js", ...modules],
    languageOptions: {
      ecmaVersion: "latest",
      // The templates load them as classic <script defer>, not type="module".
      sourceType: "script",
      globals: { ...globals.browser, ...shared },
    },
    rules,
  },
  {
    // The chat page: templates/chat/chat.html loads chat.js as <script type="module">,
    // and it imports the rest. Strict by nature; what they share they import.
    files: modules,
    languageOptions: {
      ecmaVersion: "latest",
      sourceType: "module",
      globals: { ...globals.browser, ...shared },
    },
    rules,
  },
  {
    // Registered by pwa.js with navigator.serviceWorker.register: it runs in the
    // service worker scope (self, caches, clients), where there is no window or document.
    files: ["static/js/sw.js"],
    languageOptions: {
      ecmaVersion: "latest",
      sourceType: "script",
      globals: globals.serviceworker,
    },
    rules,
  },
];
