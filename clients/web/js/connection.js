// The WebSocket client of the page: it connects to /ws of the page's own origin, authenticates
// in-band with the stored token (browsers cannot set the Authorization header on a WebSocket),
// reconnects by itself with capped, jittered exponential backoff, and hands every server message
// to the listeners of its type. It speaks docs/protocol.md, version 1, and nothing else.

export const PROTOCOL = 1;

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 5000;

/** Where the token lives: this tab's session by default, the device only when asked. */
export class TokenStore {
  static KEY = "stream-agent.token";

  get() {
    return sessionStorage.getItem(TokenStore.KEY) ?? localStorage.getItem(TokenStore.KEY);
  }

  set(token, remember) {
    this.clear();
    (remember ? localStorage : sessionStorage).setItem(TokenStore.KEY, token);
  }

  clear() {
    sessionStorage.removeItem(TokenStore.KEY);
    localStorage.removeItem(TokenStore.KEY);
  }
}

/**
 * States (the "state" event's detail.state):
 *  connecting    opening the socket (detail.attempt counts tries since the last success)
 *  login         the daemon wants a token and none is stored (detail.error: why the last failed)
 *  authenticating a stored token was sent
 *  ready         hello with everything filled in (detail.reconnected: after an outage, in ms)
 *  unreachable   the socket closed or never opened; the next try is in detail.delayMs
 *  incompatible  the daemon speaks another protocol version; no retries
 */
export class Connection {
  constructor(url, tokens) {
    this.url = url;
    this.tokens = tokens;
    this.hello = null;
    this.state = "connecting";
    this._ws = null;
    this._listeners = new Map();
    this._attempt = 0;
    this._timer = null;
    this._lostAt = null; // when the last ready connection went away
    this._everReady = false;
    this._loginError = "";
    this._halted = false;
    this._reopenQuietly = false;
  }

  /** fn(message) for every server message of this type; "state" and "closed" are local. */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, []);
    this._listeners.get(type).push(fn);
  }

  start() {
    this._open();
  }

  get ready() {
    return this.state === "ready";
  }

  /** Send a client message; false when there is no open, authenticated connection. */
  send(message) {
    if (!this.ready || this._ws === null || this._ws.readyState !== WebSocket.OPEN) return false;
    this._ws.send(JSON.stringify(message));
    return true;
  }

  /** A token typed by the person: store it and authenticate (now, or on the next hello). */
  login(token, remember) {
    this.tokens.set(token, remember);
    this._loginError = "";
    if (this._ws !== null && this._ws.readyState === WebSocket.OPEN && this.hello?.auth_required) {
      this._sendAuth(token);
    } else if (this._ws === null) {
      this._retryNow();
    }
  }

  /** Forget the token and start again (the daemon then asks for one, if it has one). */
  logout() {
    this.tokens.clear();
    if (this._ws !== null) {
      this._reopenQuietly = true;
      this._ws.close(1000, "logged out");
    } else {
      this._retryNow();
    }
  }

  // --- internals --------------------------------------------------------------------------

  _emit(type, detail) {
    for (const fn of this._listeners.get(type) ?? []) {
      try {
        fn(detail);
      } catch (error) {
        // A view's bug must not stop the others from getting the message.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  _setState(state, detail = {}) {
    this.state = state;
    this._emit("state", { state, ...detail });
  }

  _open() {
    this._timer = null;
    if (this.state !== "login") this._setState("connecting", { attempt: this._attempt });
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (error) {
      this._scheduleRetry(String(error));
      return;
    }
    this._ws = ws;
    ws.addEventListener("message", (event) => this._onMessage(ws, event));
    ws.addEventListener("close", (event) => this._onClose(ws, event));
  }

  _onMessage(ws, event) {
    if (ws !== this._ws || typeof event.data !== "string") return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message === null || typeof message !== "object") return;
    if (message.type === "hello") this._onHello(message);
    else if (
      message.type === "error" &&
      message.code === "unauthorized" &&
      (message.request_type === "auth" || message.request_type === null)
    ) {
      this.tokens.clear();
      this._loginError = "The daemon did not accept this token.";
      this._setState("login", { error: this._loginError });
    }
    this._emit(message.type, message);
  }

  _onHello(hello) {
    if (hello.protocol !== PROTOCOL) {
      this._setState("incompatible", { protocol: hello.protocol });
      this._halted = true;
      this._ws.close(1000, "unsupported protocol");
      return;
    }
    this.hello = hello;
    if (hello.auth_required) {
      const token = this.tokens.get();
      if (token) {
        this._sendAuth(token);
      } else {
        this._setState("login", { error: this._loginError });
      }
      return;
    }
    const outageMs = this._lostAt === null ? null : Date.now() - this._lostAt;
    this._attempt = 0;
    this._lostAt = null;
    this._everReady = true;
    this._loginError = "";
    this._setState("ready", { reconnected: outageMs, hello });
  }

  _sendAuth(token) {
    this._setState("authenticating");
    this._ws.send(JSON.stringify({ type: "auth", id: "login", token }));
  }

  _onClose(ws, event) {
    if (ws !== this._ws) return;
    this._ws = null;
    const wasReady = this.state === "ready";
    this._emit("closed", { code: event.code, reason: event.reason });
    if (this._halted) return;
    if (this._reopenQuietly) {
      this._reopenQuietly = false;
      this._attempt = 0;
      this._open();
      return;
    }
    if (wasReady && this._lostAt === null) this._lostAt = Date.now();
    const waitingForLogin = this.state === "login" || this.state === "authenticating";
    if (waitingForLogin && event.code === 1008) {
      // The daemon closes unauthenticated connections after a while (or after wrong tokens):
      // open a fresh one quietly, and keep showing the login form.
      if (this.state === "authenticating") this._setState("login", { error: this._loginError });
      this._timer = setTimeout(() => this._open(), MIN_DELAY_MS);
      return;
    }
    this._scheduleRetry(event.reason || `closed with code ${event.code}`);
  }

  _scheduleRetry(reason) {
    const ceiling = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** this._attempt);
    const delayMs = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this._attempt += 1;
    this._setState("unreachable", {
      attempt: this._attempt,
      delayMs,
      reason,
      lostAt: this._lostAt,
      everReady: this._everReady,
    });
    this._timer = setTimeout(() => this._open(), delayMs);
  }

  _retryNow() {
    if (this._timer !== null) clearTimeout(this._timer);
    this._open();
  }
}

/** The WebSocket URL of the daemon that served this page. */
export function daemonUrl(location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}
