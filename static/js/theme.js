// The theme toggle in every page's header: light, dark or the system's. The
// server writes the saved choice on <html data-theme> (so a page never flashes
// the other theme); a change applies at once and is kept in the profile.
"use strict";

(function () {
  const choice = document.getElementById("theme-choice");
  if (!choice) return;
  choice.addEventListener("change", async () => {
    const previous = document.documentElement.dataset.theme;
    document.documentElement.dataset.theme = choice.value;
    try {
      const response = await window.SanjaiHttp.postJSON(choice.dataset.url, { theme: choice.value });
      if (!response.ok) throw new Error(`status ${response.status}`);
    } catch (error) {
      // Not saved: show the theme the next page will have.
      document.documentElement.dataset.theme = previous;
      choice.value = previous;
    }
  });
})();
