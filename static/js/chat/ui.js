// The page's elements, and the small things every part of it does with them:
// a banner, a line for screen readers, a button, a number in the page's language, a copy.
export const chat = document.getElementById("chat");
export const list = document.getElementById("messages");
export const input = document.getElementById("input");
export const composer = document.getElementById("composer");
export const sendButton = document.getElementById("send");
export const stopButton = document.getElementById("stop");
export const title = document.getElementById("chat-title");
const banner = document.getElementById("banner");
const announcer = document.getElementById("announcer");

export function announce(text) {
  announcer.textContent = "";
  setTimeout(() => { announcer.textContent = text; }, 50);
}

export function showBanner(text, kind) {
  banner.textContent = text;
  banner.className = `banner ${kind || ""}`;
  banner.hidden = false;
}

export function hideBanner() {
  banner.hidden = true;
}

export function button(label, onClick, extra) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  if (extra) b.setAttribute("aria-label", extra);
  return b;
}

// A number as the page's language writes it (1,234.5 or 1.234,5).
export function number(value, digits) {
  const options = digits === undefined ? {} : { minimumFractionDigits: digits, maximumFractionDigits: digits };
  return Number(value).toLocaleString(document.documentElement.lang || undefined, options);
}

export async function copyText(text, spoken, feedbackButton) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  announce(spoken);
  if (feedbackButton) {
    const label = feedbackButton.textContent;
    feedbackButton.textContent = gettext("Copied");
    setTimeout(() => { feedbackButton.textContent = label; }, 1500);
  }
}
