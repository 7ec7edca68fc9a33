// The alerts page (#/alerts): alerts.list, then live `alert` frames from alerts.subscribe.
//
// One row per alert (an agent's `(agent, alert_key)`, or an Alertmanager / Grafana
// fingerprint), newest change first; an `alert` frame updates its row in place or adds it on
// top. The subscription is unfiltered (there is no unsubscribe, so filters are applied here);
// the list is asked for with the filters.

import { h, append, replaceChildren, fmtTime, labelChips, labelFilter, debounce, errorText } from './dom.js';
import { renderMarkdown } from './markdown.js';

// What the Status filter offers: a firing alert's severity, or resolved.
const STATUSES = ['Critical', 'Warning', 'Info', 'Resolved'];
const PAGE = 100;

/** Firing: its severity (`Critical`); resolved: `Resolved`. */
function statusOf(a) {
  if (a.state === 'resolved') return 'Resolved';
  const s = String(a.severity ?? '');
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** The `alerts.list` filters of a Status choice. */
function statusParams(status) {
  if (!status) return {};
  if (status === 'Resolved') return { state: 'resolved' };
  return { state: 'firing', severity: status.toLowerCase() };
}

/**
 * An alert's description: Markdown (rendered safely, see markdown.js) unless the sender said
 * it is plain text (`description_format: "text"`, tether's own checks), which keeps its lines.
 */
function description(a) {
  const ann = a.annotations ?? {};
  const text = ann.description ?? ann.summary ?? '';
  const format = String(ann.description_format ?? '').toLowerCase();
  if (format === 'text' || format === 'plain') return h('div', { class: 'plain' }, text);
  return h('div', { class: 'md' }, renderMarkdown(text));
}

export function alertsPage(ctx) {
  const { hub } = ctx;
  let alerts = []; // newest change first
  let nextCursor = null;
  let loading = false;
  let listToken = 0;
  let subscribed = false;

  const statusSelect = h('select', { id: 'alerts-status', 'data-testid': 'alerts-status', onchange: () => reload() },
    h('option', { value: '' }, 'All statuses'),
    STATUSES.map((s) => h('option', { value: s }, s)));
  const labelInput = h('input', {
    id: 'alerts-label',
    type: 'search',
    placeholder: 'e.g. mount=/var',
    'data-testid': 'alerts-label',
    oninput: debounce(() => reload(), 300),
  });
  const tbody = h('tbody');
  const table = h('table', { id: 'alerts-table', class: 'grid', 'data-testid': 'alerts-table', 'data-state': 'loading' });
  const info = h('p', { id: 'alerts-info', class: 'muted', 'aria-live': 'polite' }, 'Loading alerts…');
  const more = h('button', { id: 'alerts-more', type: 'button', hidden: true, onclick: () => load(true) }, 'Older alerts');

  const matches = (a) => {
    const status = statusSelect.value;
    if (status && statusOf(a) !== status) return false;
    return labelFilter(labelInput.value)(a.labels, [a.alert_key ?? '', a.hostname ?? '', a.title ?? '']);
  };

  function row(a, fresh) {
    const status = statusOf(a);
    const badges = [
      h('span', { class: `badge status-${status.toLowerCase()}`, 'data-testid': 'alert-status' }, status),
      a.ack ? h('span', { class: 'badge', title: `acknowledged by ${a.ack.by}${a.ack.comment ? `: ${a.ack.comment}` : ''}` }, 'acked') : null,
      a.silenced ? h('span', { class: 'badge', 'data-testid': 'alert-silenced' }, 'silenced') : null,
    ];
    return h(
      'tr',
      {
        'data-testid': 'alert-row',
        'data-alert-id': String(a.alert_id),
        'data-alert-key': a.alert_key ?? '',
        'data-status': status,
        'data-source': a.source ?? '',
        class: fresh ? 'fresh' : null,
      },
      h('td', { title: `first ${fmtTime(a.first_at)}, ${a.event_count} event(s)` }, fmtTime(a.last_at)),
      h('td', {}, badges),
      h('td', { 'data-testid': 'alert-host', title: a.agent_id ? '' : (a.route?.reason ?? '') }, a.hostname || a.agent_id || 'fleet'),
      h('td', { 'data-testid': 'alert-key', title: a.alert_key ?? '' }, a.title || a.alert_key || ''),
      h('td', { 'data-testid': 'alert-labels' }, labelChips(a.labels)),
      h('td', { class: 'desc', 'data-testid': 'alert-description' }, description(a)),
      h('td', { class: 'actions' },
        h('button', {
          type: 'button',
          class: 'small',
          'data-testid': 'alert-diagnose',
          disabled: !a.agent_id || a.state !== 'firing',
          onclick: () => ctx.openStartForm({
            agent: { agent_id: a.agent_id, hostname: a.hostname },
            mode: 'diagnose',
            alert: [status, a.title, a.annotations?.description ?? a.annotations?.summary].filter(Boolean).join(': '),
            plugin: a.labels?.plugin ?? a.annotations?.plugin ?? '',
            target: a.labels?.mount ?? a.labels?.target ?? a.annotations?.target ?? '',
          }),
        }, 'Diagnose')),
    );
  }

  function showInfo() {
    info.textContent = loading ? 'Loading alerts…' : `${alerts.length} alert(s) shown; changes move them to the top.`;
  }

  function renderAll() {
    if (alerts.length === 0) {
      replaceChildren(tbody, h('tr', {}, h('td', { colspan: 7, class: 'empty', 'data-testid': 'alerts-empty' },
        loading ? 'Loading…' : 'No alerts match.')));
    } else {
      replaceChildren(tbody, alerts.map((a) => row(a, false)));
    }
    more.hidden = !nextCursor;
    table.dataset.state = loading ? 'loading' : subscribed ? 'live' : 'loaded';
    showInfo();
  }

  async function load(older = false) {
    const token = ++listToken;
    const params = { limit: PAGE, ...statusParams(statusSelect.value) };
    const label = labelInput.value.trim();
    // The hub filters by one exact `k=v`; anything else is filtered here.
    if (/^[^=\s,]+=[^\s,]*$/.test(label)) params.label = label;
    if (older && nextCursor != null) params.cursor = nextCursor;
    loading = !older;
    if (!older) renderAll();
    try {
      const result = await hub.request('alerts.list', params);
      if (token !== listToken) return;
      const list = (result.alerts ?? []).filter(matches);
      if (!older) {
        // Keep live changes that arrived while the list was on its way.
        const live = alerts.filter((a) => !list.some((b) => b.alert_id === a.alert_id));
        alerts = [...live, ...list];
      } else {
        alerts = [...alerts, ...list.filter((a) => !alerts.some((b) => b.alert_id === a.alert_id))];
      }
      nextCursor = result.next_cursor ?? null;
    } catch (e) {
      if (token !== listToken) return;
      info.textContent = `Cannot load alerts: ${errorText(e)}`;
      loading = false;
      return;
    }
    loading = false;
    renderAll();
  }

  function reload() {
    alerts = [];
    nextCursor = null;
    if (hub.ready) load();
  }

  ctx.onFrame((frame) => {
    if (frame.event !== 'alert' || !frame.alert) return;
    const a = frame.alert;
    const old = tbody.querySelector(`[data-testid="alert-row"][data-alert-id="${String(Number(a.alert_id))}"]`);
    alerts = alerts.filter((b) => b.alert_id !== a.alert_id);
    if (old) old.remove();
    if (!matches(a)) {
      if (alerts.length === 0) renderAll();
      else showInfo();
      return;
    }
    alerts.unshift(a);
    if (tbody.querySelector('[data-testid="alerts-empty"]')) tbody.replaceChildren();
    tbody.prepend(row(a, true));
    showInfo();
  });
  ctx.onReady(async () => {
    subscribed = false;
    try {
      await hub.subscribeOnce('alerts.subscribe');
      subscribed = true;
    } catch (e) {
      info.textContent = `Cannot subscribe to alerts: ${errorText(e)}`;
    }
    await load();
  });
  renderAll();

  const el = h(
    'section',
    { class: 'page' },
    h('div', { class: 'page-head' }, h('h1', {}, 'Alerts')),
    h('div', { class: 'toolbar' },
      h('label', { for: 'alerts-status' }, 'Status'),
      statusSelect,
      h('label', { for: 'alerts-label' }, 'Label (k=v)'),
      labelInput),
    h('div', { class: 'table-wrap' },
      append(table,
        [h('thead', {}, h('tr', {},
          ['Last change', 'Status', 'Host', 'Alert', 'Labels', 'Description', ''].map((t) => h('th', { scope: 'col' }, t)))),
        tbody])),
    more,
    info,
  );
  return { el };
}
