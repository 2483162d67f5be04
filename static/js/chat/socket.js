// The conversation's websocket: connect, reconnect with a growing delay, send.
// What its events mean is events.js's business; this module only carries them.
import { constants } from "./constants.js";
import { activeReply } from "./store.js";
import { chat, hideBanner, number, showBanner } from "./ui.js";

let socket = null;
let retryDelay = 500;
let closedForGood = false;
let lastEventAt = Date.now();
let everOpened = false; // the socket has been open before: a snapshot now follows a reconnect
let reconnected = false;
let listeners = { onEvent() {}, onChange() {} };

export function isOpen() {
  return Boolean(socket && socket.readyState === WebSocket.OPEN);
}

// This connection follows a dropped one (its snapshot may settle what was in flight).
export function isReconnect() {
  return reconnected;
}

// onEvent(event) for each event from the server; onChange() whenever the socket opens,
// closes or has delivered an event (the controls depend on both).
export function connect(callbacks) {
  if (callbacks) listeners = callbacks;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}${chat.dataset.wsPath}`);
  socket.addEventListener("open", () => {
    reconnected = everOpened;
    everOpened = true;
    retryDelay = 500;
    hideBanner();
    listeners.onChange();
  });
  socket.addEventListener("message", (message) => {
    lastEventAt = Date.now();
    listeners.onEvent(JSON.parse(message.data));
    listeners.onChange();
  });
  socket.addEventListener("close", (event) => {
    listeners.onChange();
    if (event.code === constants.closeCodes.unauthenticated) {
      closedForGood = true;
      location.href = `/login/?next=${encodeURIComponent(location.pathname)}`;
    } else if (event.code === constants.closeCodes.notFound) {
      closedForGood = true;
      showBanner(gettext("This conversation does not exist or is not yours."));
    } else if (!closedForGood) {
      showBanner(interpolate(gettext("Connection lost — reconnecting in %(seconds)s s…"), { seconds: number(Math.round(retryDelay / 100) / 10) }, true));
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 8000);
    }
  });
}

// False, with a banner saying so, when there is no open connection to send on.
export function send(payload) {
  if (!isOpen()) {
    showBanner(gettext("Not connected — reconnecting. Your text is still in the box."));
    return false;
  }
  socket.send(JSON.stringify(payload));
  return true;
}

// Ask for the conversation again: the answer is a snapshot.
export function sync() {
  socket.send(JSON.stringify({ action: "sync" }));
}

// Events are hints; the database is the truth. A reply that has been quiet
// for a while may have lost its events in a broker outage: ask for the
// conversation again (the snapshot carries its state and text).
const QUIET_MS = 10000;

export function watchQuietReplies() {
  setInterval(() => {
    if (activeReply() && isOpen() && Date.now() - lastEventAt > QUIET_MS) {
      lastEventAt = Date.now();
      sync();
    }
  }, 2000);
}
