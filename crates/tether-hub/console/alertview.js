// What the alert pages share: an alert's status in words, its order (firing first), its
// description (Markdown, rendered safely), its group (host or alert name), its row in a table,
// the Diagnose button (firing alerts only) and a set of alerts kept current by `alert` frames.

import { h, timeEl, hostLink, labelChips, startRefusal } from './dom.js';
import { renderMarkdown, markdownLineText } from './markdown.js';

const SEVERITY_RANK = { critical: 0, warning: 1, info: 2 };

/** Firing: its severity (`Critical`); resolved: `Resolved`. */
export function statusOf(a) {
  if (a.state === 'resolved') return 'Resolved';
  const s = String(a.severity ?? '');
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/**
 * An alert's title for people: the hub's title (the check and target, the alertname, or a
 * description's first line) without Markdown's inline marks; the key when there is none.
 */
export function titleText(a) {
  return markdownLineText(a.title ?? '') || a.alert_key || `alert ${a.alert_id}`;
}

/** Firing before resolved; then critical, warning, info; then the newest change first. */
export function compareAlerts(a, b) {
  const fa = a.state === 'firing' ? 0 : 1;
  const fb = b.state === 'firing' ? 0 : 1;
  if (fa !== fb) return fa - fb;
  if (fa === 0) {
    const sa = SEVERITY_RANK[a.severity] ?? 3;
    const sb = SEVERITY_RANK[b.severity] ?? 3;
    if (sa !== sb) return sa - sb;
  }
  return String(b.last_at ?? '').localeCompare(String(a.last_at ?? '')) || (b.alert_id ?? 0) - (a.alert_id ?? 0);
}

/**
 * The name alerts are grouped by: Prometheus' `alertname`; for tether's checks the check
 * (`disk space_used_pct`, without the target, so every mount's alert of one check is one
 * group); else the title.
 */
export function alertName(a) {
  const l = a.labels ?? {};
  if (l.alertname) return String(l.alertname);
  const check = [l.name ?? l.plugin, l.check].filter(Boolean).join(' ');
  return check || titleText(a);
}

/** The text of an alert's description: the `description` annotation, else `summary`. */
export function descriptionText(a) {
  const ann = a.annotations ?? {};
  return ann.description ?? ann.summary ?? '';
}

/**
 * An alert's description: Markdown (rendered by markdown.js, which builds elements and text
 * nodes only, so no HTML in it is ever interpreted) unless the sender said it is plain text
 * (`description_format: "text"`, tether's own checks), which keeps its lines.
 */
export function description(a, text = descriptionText(a)) {
  const format = String(a.annotations?.description_format ?? '').toLowerCase();
  if (format === 'text' || format === 'plain') return h('div', { class: 'plain' }, text);
  return h('div', { class: 'md' }, renderMarkdown(text));
}

/** The status badge, plus `acked` and `silenced` when they apply. */
export function statusBadges(a) {
  const status = statusOf(a);
  return [
    h('span', { class: `badge status-${status.toLowerCase()}`, 'data-testid': 'alert-status' }, status),
    a.ack
      ? h('span', {
        class: 'badge acked',
        'data-testid': 'alert-acked',
        title: `acknowledged by ${a.ack.by}${a.ack.comment ? `: ${a.ack.comment}` : ''}`,
      }, 'acked')
      : null,
    a.silenced ? h('span', { class: 'badge silenced', 'data-testid': 'alert-silenced' }, 'silenced') : null,
  ];
}

/** `#/alert/<id>`. */
export function alertHref(a) {
  return `#/alert/${encodeURIComponent(String(a.alert_id))}`;
}

/**
 * The Diagnose button, offered only on a firing alert of a host (a fleet alert has no agent
 * to ask; a resolved one has nothing left to diagnose): null otherwise; disabled, with the
 * reason, for observers. The session it starts is linked to the alert (`params.alert_id`).
 */
export function diagnoseButton(ctx, a, attrs = {}) {
  if (a.state !== 'firing' || !a.agent_id) return null;
  const why = startRefusal(ctx.hub);
  return h('button', {
    type: 'button',
    class: 'small',
    'data-testid': 'alert-diagnose',
    disabled: Boolean(why),
    title: why || 'Start a diagnose session on the host about this alert',
    onclick: () => ctx.openStartForm({
      agent: { agent_id: a.agent_id, hostname: a.hostname },
      mode: 'diagnose',
      alert: [statusOf(a), titleText(a), descriptionText(a)].filter(Boolean).join(': '),
      plugin: a.labels?.plugin ?? a.annotations?.plugin ?? '',
      target: a.labels?.mount ?? a.labels?.target ?? a.annotations?.target ?? '',
      alertId: a.alert_id,
    }),
    ...attrs,
  }, 'Diagnose');
}

/** When: the last change (date and time), and since when it fires or when it resolved. */
function whenCell(a) {
  const since = a.state === 'resolved'
    ? ['resolved ', timeEl(a.resolved_at ?? a.last_at)]
    : ['firing since ', timeEl(a.started_at ?? a.first_at)];
  return h('td', { class: 'when', 'data-testid': 'alert-when' },
    h('div', {}, timeEl(a.last_at)),
    h('div', { class: 'muted small' }, since),
    h('div', { class: 'muted small' }, `${a.event_count ?? 1} event(s)`));
}

/**
 * One alert as a table row. `host`: whether to show the Host column (left out where the rows
 * are one host's); `fresh`: flash the row (a live change).
 */
export function alertRow(ctx, a, { host = true, fresh = false } = {}) {
  const status = statusOf(a);
  return h(
    'tr',
    {
      'data-testid': 'alert-row',
      'data-alert-id': String(a.alert_id),
      'data-alert-key': a.alert_key ?? '',
      'data-status': status,
      'data-state': a.state ?? '',
      'data-source': a.source ?? '',
      'data-acked': a.ack ? 'true' : 'false',
      'data-silenced': a.silenced ? 'true' : 'false',
      class: fresh ? 'fresh' : null,
    },
    whenCell(a),
    h('td', { class: 'badges' }, statusBadges(a)),
    h('td', { class: 'title' },
      h('a', { href: alertHref(a), class: 'alert-title strong', 'data-testid': 'alert-title', title: `alert ${a.alert_id} (key ${a.alert_key ?? ''})` }, titleText(a)),
      h('div', { class: 'muted small' }, a.source === 'agent' ? 'agent check' : `${a.source}${a.source_name ? ` (${a.source_name})` : ''}`)),
    host ? h('td', { 'data-testid': 'alert-host' }, hostLink(a.agent_id, a.hostname, { why: a.route?.reason })) : null,
    h('td', { 'data-testid': 'alert-labels' }, labelChips(a.labels)),
    h('td', { class: 'desc', 'data-testid': 'alert-description' }, description(a)),
    h('td', { class: 'actions' }, diagnoseButton(ctx, a)),
  );
}

/** The header cells matching [`alertRow`]. */
export function alertHeader({ host = true } = {}) {
  const cols = [['when', 'When'], ['status', 'Status'], ['alert', 'Alert'], host ? ['host', 'Host'] : null,
    ['labels', 'Labels'], ['desc', 'Description'], ['act', '']];
  return h('thead', {}, h('tr', {},
    cols.filter(Boolean).map(([c, t]) => h('th', { scope: 'col', class: `c-${c}` }, t))));
}

/**
 * Alerts grouped by `by` (`host` or `alertname`): [{key, label, alerts, firing}], each
 * group's alerts in [`compareAlerts`] order, groups with firing alerts first (the worst
 * severity, then the newest change), then the rest by their newest change.
 */
export function groupAlerts(alerts, by) {
  const groups = new Map();
  for (const a of alerts) {
    const key = by === 'host' ? (a.agent_id ?? '') : alertName(a);
    let g = groups.get(key);
    if (!g) {
      g = { key, alerts: [], agent_id: a.agent_id ?? null, hostname: a.hostname ?? null };
      groups.set(key, g);
    }
    g.alerts.push(a);
  }
  const list = [...groups.values()];
  for (const g of list) {
    g.alerts.sort(compareAlerts);
    g.firing = g.alerts.filter((a) => a.state === 'firing').length;
    g.first = g.alerts[0];
  }
  list.sort((x, y) => compareAlerts(x.first, y.first) || String(x.key).localeCompare(String(y.key)));
  return list;
}

/** A matcher in Alertmanager's notation: `name="value"` or `name=~"regex"`. */
export function matcherText(m) {
  return `${m.name}${m.is_regex ? '=~' : '='}${JSON.stringify(String(m.value ?? ''))}`;
}

/**
 * The matchers a silence of this alert starts with: its labels, each as an equality; plus its
 * host (`hostname`) when no label names one, so that a silence of `mount=/var` does not cover
 * every host's `/var`; an alert without labels gets its key.
 */
export function silenceMatchers(a) {
  const labels = a.labels ?? {};
  const matchers = Object.keys(labels).sort().map((name) => ({ name, value: String(labels[name]), is_regex: false }));
  const named = ['hostname', 'instance', 'host', 'nodename'].some((k) => Object.hasOwn(labels, k));
  if (a.hostname && !named) matchers.push({ name: 'hostname', value: a.hostname, is_regex: false });
  if (matchers.length === 0) matchers.push({ name: 'alert_key', value: a.alert_key ?? '', is_regex: false });
  return matchers;
}
