// Share by link: a read-only snapshot of the branch shown, made, updated and
// revoked from the conversation's share panel (POST/DELETE on its share URL).
import { csrfToken } from "./http.js";
import { announce, copyText, showBanner } from "./ui.js";

const sharePanel = document.getElementById("share-panel");

// The page became another conversation's (start.js): the panel shares that one.
export function setShareUrl(url) {
  if (sharePanel) sharePanel.dataset.url = url;
}

export function setUpSharing() {
  if (!sharePanel) return;
  const toggle = document.getElementById("share-toggle");
  const link = document.getElementById("share-link");
  const url = document.getElementById("share-url");
  const make = document.getElementById("share-make");
  const revoke = document.getElementById("share-revoke");

  toggle.addEventListener("click", () => {
    sharePanel.hidden = !sharePanel.hidden;
    toggle.setAttribute("aria-expanded", String(!sharePanel.hidden));
  });

  async function call(method, body) {
    const response = await fetch(sharePanel.dataset.url, {
      method, body, headers: { "X-CSRFToken": csrfToken() }, credentials: "same-origin",
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error || interpolate(gettext("The server answered %(status)s."), { status: response.status }, true));
    return answer;
  }

  make.addEventListener("click", async () => {
    const form = new FormData();
    if (document.getElementById("share-show-owner").checked) form.set("show_owner", "1");
    try {
      const answer = await call("POST", form);
      url.value = answer.url;
      link.hidden = revoke.hidden = false;
      make.textContent = gettext("Update the link");
      announce(gettext("The link shows the conversation as it is now."));
    } catch (error) {
      showBanner(error.message);
    }
  });

  revoke.addEventListener("click", async () => {
    try {
      await call("DELETE");
      url.value = "";
      link.hidden = revoke.hidden = true;
      make.textContent = gettext("Create a link");
      announce(gettext("The conversation is no longer shared: its link answers nothing."));
    } catch (error) {
      showBanner(error.message);
    }
  });

  document.getElementById("share-copy").addEventListener("click", (event) => {
    copyText(url.value, gettext("Link copied."), event.currentTarget);
  });
}
