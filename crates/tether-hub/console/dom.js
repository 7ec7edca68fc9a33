// Small DOM helpers. Nothing here (or anywhere in the console) assigns innerHTML: every piece
// of text from the hub becomes a text node.

/**
 * Creates an element. `attrs` keys:
 *   class, id, text (textContent), for (htmlFor), data-* / aria-* / role / other attributes,
 *   on<event> (a listener), and DOM properties given as `.name` (e.g. `.value`, `.checked`).
 * Children: nodes, strings (text nodes), numbers, arrays; null / undefined / false are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'for') el.htmlFor = value;
    else if (key.startsWith('.')) el[key.slice(1)] = value;
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replaces every child of `el`. */
export function replaceChildren(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

function pad(n) {
  return String(n).padStart(2, '0');
}

/** `14:03:07` today, `2025-01-02 14:03:07` on another day; `—` when absent or invalid. */
export function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

/** `2025-01-02 14:03:07` (local time), always with the date; `—` when absent or invalid. */
export function fmtDateTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A `<time>` showing the date and time, with the exact UTC instant as its tooltip. */
export function timeEl(iso, attrs = {}) {
  return h('time', { datetime: iso ?? '', title: iso ?? '', ...attrs }, fmtDateTime(iso));
}

/** `5 s ago`, `3 min ago`, `2 h ago`, `4 d ago`. */
export function fmtAgo(iso, now = Date.now()) {
  if (!iso) return '';
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return '';
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function fmtPct(v) {
  return typeof v === 'number' && Number.isFinite(v) ? `${v.toFixed(1)} %` : '—';
}

export function fmtDuration(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

/** Labels object → `k=v` strings, sorted. */
export function labelPairs(labels) {
  if (!labels || typeof labels !== 'object') return [];
  return Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]}`);
}

export function labelChips(labels) {
  const pairs = labelPairs(labels);
  if (pairs.length === 0) return h('span', { class: 'muted' }, '—');
  return h(
    'span',
    { class: 'chips' },
    pairs.map((p) => h('span', { class: 'chip', 'data-testid': 'label' }, p)),
  );
}

/**
 * A filter on labels: whitespace- or comma-separated terms, all of which must match.
 * `k=v` matches a label exactly; a bare word matches any label key or value (or any of the
 * extra strings given) containing it, case-insensitively.
 */
export function labelFilter(text) {
  const terms = String(text ?? '')
    .split(/[\s,]+/)
    .map((t) => t.trim())
    .filter(Boolean);
  return (labels, extra = []) => {
    const l = labels && typeof labels === 'object' ? labels : {};
    return terms.every((term) => {
      const eq = term.indexOf('=');
      if (eq > 0) {
        const k = term.slice(0, eq);
        return Object.hasOwn(l, k) && String(l[k]) === term.slice(eq + 1);
      }
      const needle = term.toLowerCase();
      const hay = [...Object.keys(l), ...Object.values(l).map(String), ...extra.map(String)];
      return hay.some((s) => s.toLowerCase().includes(needle));
    });
  };
}

/** Calls `fn` after `ms` of quiet. */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** The text shown for a refused request: `reason: message`. */
export function errorText(err) {
  if (!err) return 'unknown error';
  const reason = err.reason ?? err.name ?? 'error';
  const message = err.message && err.message !== reason ? err.message : '';
  return message ? `${reason}: ${message}` : reason;
}

export function who(client) {
  if (!client) return 'nobody';
  return client.name ? `${client.name} (${client.class ?? '?'})` : (client.client_id ?? '?');
}

const STATE_TEXT = {
  idle: 'Idle',
  running: 'Working',
  requires_action: 'Waiting for approval',
  closed: 'Closed',
};

/** A session state in words (`requires_action` → `Waiting for approval`). */
export function stateText(state) {
  if (!state) return '…';
  return STATE_TEXT[state] ?? String(state).replace(/_/g, ' ');
}

/** `in 5 s`, `in 3 min`, `in 1 h 59 min`, `in 4 d 2 h` (a time to come); '' when absent or past. */
export function fmtIn(iso, now = Date.now()) {
  if (!iso) return '';
  const t = new Date(iso).getTime();
  if (Number.isNaN(t) || t <= now) return '';
  const s = Math.round((t - now) / 1000);
  if (s < 60) return `in ${s} s`;
  if (s < 3600) return `in ${Math.floor(s / 60)} min`;
  const m = Math.floor((s % 3600) / 60);
  if (s < 86400) return `in ${Math.floor(s / 3600)} h${m ? ` ${m} min` : ''}`;
  const hours = Math.floor((s % 86400) / 3600);
  return `in ${Math.floor(s / 86400)} d${hours ? ` ${hours} h` : ''}`;
}

/**
 * A link to a host's page (`#/host/<agent_id>`) showing its hostname; a fleet alert (no
 * agent) gets the word `fleet` instead, with `why` (its routing reason) as the tooltip.
 */
export function hostLink(agentId, hostname, { why = '' } = {}) {
  if (!agentId) {
    return h('span', { class: 'muted', 'data-testid': 'host-fleet', title: why || 'no agent matched this alert' }, 'fleet');
  }
  return h('a', {
    href: `#/host/${encodeURIComponent(agentId)}`,
    class: 'host-link',
    'data-testid': 'host-link',
    'data-agent-id': agentId,
    title: `host page of ${hostname || agentId}`,
  }, hostname || agentId);
}

/**
 * Whether the signed-in credential may act on alerts and silences (observers may only read;
 * the hub refuses them with `forbidden` anyway). Returns '' when it may, else the reason.
 */
export function actRefusal(hub) {
  const cls = hub.identity?.class;
  if (cls === 'observer') return 'Observers may read alerts and silences, not acknowledge, silence or expire.';
  if (!hub.ready) return 'Not connected to the hub.';
  return '';
}

/** Why the signed-in credential may not start sessions ('' when it may): observers may not. */
export function startRefusal(hub) {
  return hub.identity?.class === 'observer' ? 'Observers cannot start sessions.' : '';
}

/** A safe external link (http, https): an `<a>` opening in a new tab; plain text otherwise. */
export function extLink(url, text = url, attrs = {}) {
  let ok = false;
  try {
    const u = new URL(String(url));
    ok = u.protocol === 'http:' || u.protocol === 'https:';
  } catch {
    ok = false;
  }
  if (!ok) return h('span', { class: 'mono', ...attrs }, text);
  return h('a', { href: String(url), target: '_blank', rel: 'noopener noreferrer', ...attrs }, text);
}
