// Following a reply after a reconnect, on whichever web replica the socket
// lands. The snapshot carries the reply's stored text, which the worker saves
// about once a second, so it is up to a second behind the stream: the deltas
// that arrive next start past its end. They are kept here, a snapshot is asked
// for once the worker has saved again, and they are added as soon as the text
// shown reaches them. Without this the reply would stand still until its end.
import { isOpen, sync } from "./socket.js";

const ahead = new Map(); // message id -> [{offset, text}], deltas past the text shown
const SAVE_WAIT_MS = 1200; // the worker's save interval (chat/lifecycle/run.py), and a little more
let syncTimer = null;

// Add `text` at `offset` to the message's content where it continues it; keep it for later
// where it starts past the end. True if the content changed.
export function addDelta(message, offset, text) {
  const changed = extend(message, offset, text);
  if (offset > (message.content || "").length) {
    if (!ahead.has(message.id)) ahead.set(message.id, []);
    ahead.get(message.id).push({ offset, text });
    syncSoon();
  }
  return catchUp(message) || changed;
}

// After a snapshot replaced the message's text: add the kept deltas it now reaches.
export function catchUp(message) {
  const pieces = ahead.get(message.id);
  if (!pieces) return false;
  let changed = false;
  let progress = true;
  while (progress) {
    progress = false;
    for (const piece of [...pieces]) {
      const have = (message.content || "").length;
      if (piece.offset > have) continue;
      progress = extend(message, piece.offset, piece.text) || progress;
      pieces.splice(pieces.indexOf(piece), 1);
    }
    changed = changed || progress;
  }
  if (!pieces.length) ahead.delete(message.id);
  else syncSoon();
  return changed;
}

// A snapshot's stored text is behind what the page already showed of a reply it
// followed before (the deltas of a dropped connection): keep the longer one.
export function keepShown(message, shown) {
  if (message.status === "streaming" && shown && shown.length > (message.content || "").length
      && shown.startsWith(message.content || "")) {
    message.content = shown;
  }
}

// The reply ended: its final text is in the event, nothing kept is needed.
export function forgetAhead(id) {
  ahead.delete(id);
}

function extend(message, offset, text) {
  const have = (message.content || "").length;
  if (offset > have || offset + text.length <= have) return false;
  message.content = (message.content || "") + text.slice(have - offset);
  return true;
}

function syncSoon() {
  if (syncTimer) return;
  syncTimer = setTimeout(() => {
    syncTimer = null;
    if (ahead.size && isOpen()) sync();
  }, SAVE_WAIT_MS);
}
