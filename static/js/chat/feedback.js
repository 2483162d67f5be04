// Feedback: thumbs up or down on a reply, with an optional comment, changeable.
// `rerender(message)` draws the reply again once the server has stored the rating.
import { postJSON } from "./http.js";
import { announce, button, chat, showBanner } from "./ui.js";

export function feedbackFor(message, rerender) {
  const wrap = document.createElement("span");
  wrap.className = "feedback";
  const current = message.feedback || null;
  for (const [rating, name] of [["up", gettext("Good reply")], ["down", gettext("Bad reply")]]) {
    const chosen = current !== null && current.rating === rating;
    const b = button("", () => rate(message, chosen ? null : rating, current ? current.comment : "", rerender), name);
    b.append(thumb(rating));
    b.title = name;
    b.className = `rate rate-${rating}`;
    b.setAttribute("aria-pressed", String(chosen));
    wrap.append(b);
  }
  if (current) {
    const comment = button(current.comment ? gettext("Edit comment") : gettext("Add a comment"), () => editComment(message, rerender));
    comment.className = "rate-comment";
    wrap.append(comment);
  }
  return wrap;
}

// A thumb drawn as SVG (Feather's thumbs-up, MIT): no emoji font needed, no inline style.
function thumb(rating) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  for (const [name, value] of Object.entries({
    viewBox: "0 0 24 24", width: "16", height: "16", fill: "none", stroke: "currentColor",
    "stroke-width": "2", "stroke-linecap": "round", "stroke-linejoin": "round", "aria-hidden": "true",
  })) svg.setAttribute(name, value);
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  if (rating === "down") path.setAttribute("transform", "rotate(180 12 12)");
  path.setAttribute("d", "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3");
  svg.append(path);
  return svg;
}

async function rate(message, rating, comment, rerender) {
  const url = chat.dataset.feedbackUrl.replace("/0/", `/${message.id}/`);
  const response = await postJSON(url, { rating, comment });
  const answer = await response.json();
  if (!response.ok) {
    showBanner(answer.error || gettext("The rating was not saved."), "info");
    return;
  }
  message.feedback = answer.feedback;
  rerender(message);
  announce(rating ? gettext("Thanks: your rating was saved.") : gettext("Rating removed."));
}

function editComment(message, rerender) {
  const form = document.createElement("form");
  form.className = "feedback-comment";
  const area = document.createElement("textarea");
  area.rows = 2;
  area.maxLength = 2000;
  area.value = message.feedback.comment || "";
  area.setAttribute("aria-label", gettext("What was good or bad about this reply?"));
  area.placeholder = gettext("What was good or bad about this reply? (optional)");
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = gettext("Save comment");
  form.append(area, save);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    rate(message, message.feedback.rating, area.value, rerender);
  });
  message.el.querySelector(".actions").after(form);
  area.focus();
}
