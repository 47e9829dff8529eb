// The web joiner page: draws the shared terminal with xterm.js from the
// link's WebSocket (<page address>/ws), says who shares and how in the status
// line, and reconnects when the socket drops (not when the session ended).
// Binary messages are terminal output; text messages are JSON status:
//   hello {owner, access, cols, rows}, size {cols, rows}, notice {text}, end {reason}.
// A read-write page sends keystrokes as binary messages and its window size as
// {type: "resize", cols, rows}; a read-only page sends nothing.
"use strict";

(function () {
  const statusLine = document.getElementById("status");
  const term = new Terminal({ cursorBlink: true, scrollback: 1000, fontSize: 15 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));

  const address = new URL(window.location.href);
  address.search = "";
  address.hash = "";
  address.protocol = address.protocol === "https:" ? "wss:" : "ws:";
  address.pathname = address.pathname.replace(/\/$/, "") + "/ws";

  const encoder = new TextEncoder();
  let socket = null;
  let info = { owner: "", access: "" };
  let ended = false;
  let retry = 1;
  let notice = "";

  function show(state) {
    const who = info.owner ? `shared by ${info.owner}` : "shared terminal";
    const parts = [who];
    if (info.access) parts.push(info.access);
    parts.push(state);
    if (notice) parts.push(notice);
    statusLine.textContent = parts.join(" · ");
    document.body.dataset.state = state.split(":")[0];
  }

  function writable() {
    return info.access === "read-write" && socket && socket.readyState === WebSocket.OPEN;
  }

  function sendSize() {
    if (!writable()) return;
    const wanted = fit.proposeDimensions();
    if (wanted && wanted.cols > 0 && wanted.rows > 0) {
      socket.send(JSON.stringify({ type: "resize", cols: wanted.cols, rows: wanted.rows }));
    }
  }

  term.onData((data) => {
    if (writable()) socket.send(encoder.encode(data));
  });
  term.onBinary((data) => {
    if (writable()) socket.send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 255));
  });
  window.addEventListener("resize", sendSize);

  function onStatus(message) {
    if (message.type === "hello") {
      info = { owner: message.owner, access: message.access };
      term.options.disableStdin = message.access !== "read-write";
      term.resize(message.cols, message.rows);
      show("connected");
      sendSize();
    } else if (message.type === "size") {
      term.resize(message.cols, message.rows);
    } else if (message.type === "notice") {
      notice = message.text;
      show("connected");
    } else if (message.type === "end") {
      ended = true;
      notice = "";
      show(`ended: ${message.reason}`);
    }
  }

  function connect() {
    show("connecting");
    socket = new WebSocket(address.toString());
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      retry = 1;
      term.reset(); // the server starts with a full redraw of the current screen
    };
    socket.onmessage = (event) => {
      if (typeof event.data === "string") {
        onStatus(JSON.parse(event.data));
      } else {
        term.write(new Uint8Array(event.data));
      }
    };
    socket.onclose = () => {
      socket = null;
      if (ended) return;
      show(`disconnected: reconnecting in ${retry}s`);
      setTimeout(connect, retry * 1000);
      retry = Math.min(retry * 2, 16);
    };
  }

  connect();
  term.focus();
})();
