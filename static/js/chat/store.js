// What the page knows of the conversation: the messages shown, in order, and the
// few facts about what is on its way. The server is the truth: a snapshot on every
// (re)connect replaces the messages, events then update them.
export const messages = new Map(); // id -> {id, role, content, status, error, usage, el}

export const pending = {
  // Text sent but not yet stored: put back in the box if the server refuses it
  // (too long, too many replies at once), so nothing the user wrote is lost.
  text: null,
  documents: [],  // the documents that went with it, pending until it is stored
  modelLoading: "", // "Loading <model> … NN%" while the workers load it; a reply sent now waits for it
  starting: false, // the home page's first message is on its way
};

// The text (and its documents) was stored, or refused: nothing is waiting for it now.
export function forgetSent() {
  pending.text = null;
  pending.documents = [];
}

export function upsert(payload) {
  const existing = messages.get(payload.id);
  const message = Object.assign(existing || { el: null }, payload);
  messages.set(message.id, message);
  return message;
}

export function lastOf(role) {
  let found = null;
  for (const m of messages.values()) if (m.role === role) found = m;
  return found;
}

export function activeReply() {
  for (const m of messages.values()) {
    if (m.role === "assistant" && ["pending", "streaming", "tool_wait"].includes(m.status)) return m;
  }
  return null;
}
