// Keyboard shortcuts on every page with the sidebar (the chat's own are in composer.js):
// Ctrl+Shift+O a new chat, Ctrl+/ or ? the list of shortcuts, Esc closes the drawer.
import { drawerOpen, setSidebarOpen } from "./sidebar.js";

export function setUpShortcuts() {
  const help = document.getElementById("shortcuts");
  const newChat = document.getElementById("new-chat");
  if (!help) return;
  const openHelp = () => { if (!help.open) help.showModal(); };
  document.getElementById("shortcuts-open").addEventListener("click", openHelp);
  document.getElementById("shortcuts-close").addEventListener("click", () => help.close());
  const typing = (target) => target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.isComposing) return;
    const mod = event.ctrlKey || event.metaKey;
    if (mod && event.shiftKey && !event.altKey && event.code === "KeyO") {
      event.preventDefault();
      if (newChat) location.assign(newChat.href);
    } else if (mod && !event.shiftKey && !event.altKey && (event.key === "/" || event.code === "Slash")) {
      event.preventDefault();
      if (help.open) help.close(); else openHelp();
    } else if (event.key === "?" && !mod && !event.altKey && !typing(event.target) && !help.open) {
      event.preventDefault();
      openHelp();
    } else if (event.key === "Escape" && !help.open && drawerOpen()) {
      event.preventDefault();
      setSidebarOpen(false);
      document.getElementById("sidebar-toggle")?.focus();
    }
  });
}
