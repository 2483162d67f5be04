// The model's state: "Loading <model> … NN%" while the workers load it, and each
// model choice labelled with what it is doing (GET on #model-status's URL, polled).
import { refreshControls, renderSoon } from "./render.js";
import { currentModel } from "./settings.js";
import { activeReply, pending } from "./store.js";

const modelStatus = document.getElementById("model-status");

export async function watchModel() {
  let next = 15000;  // a ready model: look again now and then, in case its worker goes
  try {
    const response = await fetch(modelStatus.dataset.url, { headers: { Accept: "application/json" } });
    if (response.ok) {
      const { models } = await response.json();
      labelModelChoices(models);
      // The conversation's own model; on the home page, any.
      const chosen = models.filter((model) => model.name === currentModel());
      const loading = chosen.find((model) => model.state === "loading");
      const wasLoading = pending.modelLoading;
      pending.modelLoading = loading === undefined || chosen.some((model) => model.state === "ready") ? "" :
        interpolate(gettext("Loading %(model)s … %(progress)s%"), { model: loading.name, progress: loading.progress }, true) +
        (loading.stage ? ` (${loading.stage})` : "");
      if (pending.modelLoading) {
        modelStatus.textContent = pending.modelLoading;
        next = 2000;
      }
      modelStatus.hidden = !pending.modelLoading;
      const waiting = activeReply();
      if (waiting && waiting.status === "pending" && pending.modelLoading !== wasLoading) renderSoon(waiting);
      refreshControls();
    }
  } catch (error) {
    next = 5000;  // the server is restarting: the socket says so
  }
  setTimeout(watchModel, next);
}

// The model choices say what each model is doing right now.
const STATE_LABELS = { ready: gettext("ready"), loading: gettext("loading"), no_worker: gettext("no worker") };
function labelModelChoices(models) {
  for (const option of document.querySelectorAll("select[data-model-choice] option")) {
    const model = models.find((candidate) => candidate.name === option.value);
    if (!model) continue;
    const state = model.state === "loading"
      ? interpolate(gettext("loading %(progress)s%"), { progress: model.progress }, true) : STATE_LABELS[model.state];
    option.textContent = `${model.name} (${state})`;
  }
}
