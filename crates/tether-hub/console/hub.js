// The hub connection: one WebSocket at /v1/ws, requests with replies matched by id, frames
// (events and control frames) fanned out to listeners, and reconnection with backoff.
//
// Status: 'idle' → 'connecting' → 'ready' (hello answered) → 'reconnecting' (dropped; a timer
// runs) → 'ready' … A connection refused before it opened is checked with a plain HTTP GET of
// the REST mirror: HTTP 401 means the hub refused the token ('refused', no more retries); no
// answer at all means the hub is unreachable (retry).

const REQUEST_TIMEOUT_MS = 30000;
const HELLO_TIMEOUT_MS = 10000;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;

export class HubError extends Error {
  constructor(error) {
    super(error?.message ?? error?.reason ?? 'error');
    this.name = 'HubError';
    this.reason = error?.reason ?? 'internal';
    this.details = error ?? {};
  }
}

export function wsUrl(token, loc = window.location) {
  const scheme = loc.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${loc.host}/v1/ws?token=${encodeURIComponent(token)}`;
}

export class Hub {
  constructor() {
    this.token = null;
    this.ws = null;
    this.status = 'idle';
    this.statusText = '';
    this.identity = null;
    this.nextId = 1;
    this.pending = new Map();
    this.listeners = { frame: new Set(), ready: new Set(), status: new Set() };
    this.attempt = 0;
    this.timer = null;
    this.generation = 0; // counts successful connections; subscriptions are per connection
    this.subscribed = new Map();
    this.evicted = false;
  }

  /** Registers a listener ('frame', 'ready' or 'status'); returns the function that removes it. */
  on(type, fn) {
    this.listeners[type].add(fn);
    return () => this.listeners[type].delete(fn);
  }

  emit(type, value) {
    for (const fn of [...this.listeners[type]]) {
      try {
        fn(value);
      } catch (e) {
        console.error(`tether console: ${type} listener failed`, e);
      }
    }
  }

  setStatus(status, text = '') {
    this.status = status;
    this.statusText = text;
    this.emit('status', { status, text });
  }

  get ready() {
    return this.status === 'ready';
  }

  /** Connects with `token` (closing any current connection). */
  start(token) {
    this.stop();
    this.token = token;
    this.attempt = 0;
    this.connect();
  }

  /** Closes the connection and stops reconnecting. */
  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onclose = ws.onmessage = ws.onerror = null;
      try {
        ws.close(1000, 'signed out');
      } catch {
        // already closed
      }
    }
    this.failPending('disconnected', 'the connection to the hub was closed');
    this.identity = null;
    this.token = null;
    this.setStatus('idle');
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (!this.token) return;
    this.setStatus(this.attempt === 0 ? 'connecting' : 'reconnecting', 'connecting to the hub…');
    let ws;
    try {
      ws = new WebSocket(wsUrl(this.token));
    } catch (e) {
      this.setStatus('refused', `cannot open a WebSocket: ${e.message}`);
      return;
    }
    this.ws = ws;
    this.evicted = false;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.hello(ws);
    };
    ws.onmessage = (msg) => this.receive(msg.data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.identity = null;
      this.failPending('disconnected', 'the connection to the hub was lost');
      if (!opened) this.refusedOrUnreachable();
      else this.scheduleReconnect(this.evicted ? 'evicted by the hub' : closeText(ev));
    };
    ws.onerror = () => {
      // Always followed by a close event, which does the work.
    };
  }

  async hello(ws) {
    try {
      const result = await this.request('hello', { client_name: 'tether-console' }, {
        timeout: HELLO_TIMEOUT_MS,
        ws,
      });
      if (this.ws !== ws) return;
      this.identity = result;
      this.attempt = 0;
      this.generation += 1;
      this.subscribed.clear();
      this.setStatus('ready', `signed in as ${result.name ?? result.client_id}`);
      this.emit('ready', result);
    } catch (e) {
      if (this.ws !== ws) return;
      if (e.reason === 'unauthorized' || e.reason === 'forbidden') {
        this.refuse(`the hub refused the token (${e.reason})`);
      } else {
        try {
          ws.close(4000, 'hello failed');
        } catch {
          // closed already
        }
      }
    }
  }

  /**
   * The socket closed before it opened. The browser hides the HTTP status of a refused
   * upgrade, so ask the hub over plain HTTP with the same token (GET /api/v1/agents, the REST
   * mirror): 401/403 means the hub refused the token; 200 means the token is fine and only the
   * WebSocket failed (retry); no answer at all means the hub is unreachable (retry). Any other
   * answer counts as a refusal.
   */
  async refusedOrUnreachable() {
    const token = this.token;
    let response = null;
    try {
      const ctl = new AbortController();
      const t = setTimeout(() => ctl.abort(), 5000);
      response = await fetch(`/api/v1/agents?token=${encodeURIComponent(token)}&connected=true`, {
        cache: 'no-store',
        signal: ctl.signal,
      });
      clearTimeout(t);
    } catch {
      response = null;
    }
    if (this.token !== token) return; // signed out or restarted meanwhile
    if (response === null) {
      this.scheduleReconnect('cannot reach the hub');
    } else if (response.ok) {
      this.scheduleReconnect('the hub accepted the token but the WebSocket connection failed');
    } else if (response.status === 503) {
      this.scheduleReconnect('the hub is overloaded (HTTP 503)');
    } else if (response.status >= 500) {
      this.scheduleReconnect(`the hub answered HTTP ${response.status}`);
    } else {
      this.refuse('the hub refused the token');
    }
  }

  refuse(text) {
    clearTimeout(this.timer);
    this.timer = null;
    this.token = null;
    this.setStatus('refused', text);
  }

  scheduleReconnect(why) {
    if (!this.token) return;
    const base = this.evicted
      ? 200
      : Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.min(this.attempt, 10));
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    this.attempt += 1;
    this.setStatus('reconnecting', `${why}; reconnecting in ${Math.max(1, Math.round(delay / 1000))} s…`);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Reconnects now (the "retry" button). */
  retryNow() {
    if (this.token && this.status === 'reconnecting') this.connect();
  }

  receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      console.warn('tether console: a frame that is not JSON', data);
      return;
    }
    if (frame === null || typeof frame !== 'object') return;
    if (Object.hasOwn(frame, 're')) {
      const p = this.pending.get(frame.re);
      if (!p) {
        if (frame.ok === false) console.warn('tether console: refused', frame.error);
        return;
      }
      this.pending.delete(frame.re);
      clearTimeout(p.timer);
      if (frame.ok) p.resolve(frame.result ?? {});
      else p.reject(new HubError(frame.error));
      return;
    }
    if (typeof frame.event === 'string') {
      if (frame.event === 'evicted') this.evicted = true;
      this.emit('frame', frame);
    }
  }

  /** Sends `{id, op, ...params}`; resolves with `result` or rejects with a HubError. */
  request(op, params = {}, { timeout = REQUEST_TIMEOUT_MS, ws = null } = {}) {
    const socket = ws ?? (this.ready ? this.ws : null);
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      return Promise.reject(
        new HubError({ reason: 'disconnected', message: 'not connected to the hub' }),
      );
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new HubError({ reason: 'timeout', message: `no reply to ${op} within ${timeout / 1000} s` }));
      }, timeout);
      this.pending.set(id, { resolve, reject, timer });
      try {
        socket.send(JSON.stringify({ ...params, id, op }));
      } catch (e) {
        this.pending.delete(id);
        clearTimeout(timer);
        reject(new HubError({ reason: 'disconnected', message: e.message }));
      }
    });
  }

  /** Sends a subscribe op once per connection (there is no unsubscribe). */
  subscribeOnce(op, params = {}) {
    const key = `${op} ${JSON.stringify(params)}`;
    let p = this.subscribed.get(key);
    if (!p) {
      p = this.request(op, params);
      this.subscribed.set(key, p);
      p.catch(() => {
        if (this.subscribed.get(key) === p) this.subscribed.delete(key);
      });
    }
    return p;
  }

  failPending(reason, message) {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(new HubError({ reason, message }));
    }
  }
}

function closeText(ev) {
  if (ev.code === 1001) return 'the hub is shutting down';
  if (ev.code === 1008) return `the hub closed the connection (${ev.reason || 'policy'})`;
  if (ev.code === 1009) return 'a message was too big';
  if (ev.reason) return `connection closed (${ev.reason})`;
  return 'connection lost';
}
