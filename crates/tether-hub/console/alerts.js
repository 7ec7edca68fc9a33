// The alerts page (#/alerts): alerts.list, then live `alert` frames from alerts.subscribe.
//
// The subscription is unfiltered (there is no unsubscribe, so filters are applied here); the
// list is asked for with the filters, and live alerts that match are put on top.

import { h, append, replaceChildren, fmtTime, labelChips, labelFilter, debounce, errorText } from './dom.js';
import { renderMarkdown } from './markdown.js';

const STATUSES = ['Critical', 'Warning', 'Info', 'Ok'];
const PAGE = 100;

/**
 * An alert's description: Markdown (rendered safely, see markdown.js) unless the sender said
 * it is plain text (`description_format: "text"`, tether's own checks), which keeps its lines.
 */
function description(a) {
  const text = a.description ?? '';
  const format = String(a.description_format ?? '').toLowerCase();
  if (format === 'text' || format === 'plain') return h('div', { class: 'plain' }, text);
  return h('div', { class: 'md' }, renderMarkdown(text));
}

export function alertsPage(ctx) {
  const { hub } = ctx;
  let alerts = []; // newest first
  const seen = new Set();
  let nextBeforeId = null;
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
    if (status && a.event_status !== status) return false;
    return labelFilter(labelInput.value)(a.labels, [a.alert_key ?? '', a.hostname ?? '']);
  };

  function row(a, fresh) {
    return h(
      'tr',
      {
        'data-testid': 'alert-row',
        'data-alert-id': String(a.id),
        'data-alert-key': a.alert_key ?? '',
        'data-status': a.event_status,
        class: fresh ? 'fresh' : null,
      },
      h('td', { title: `received ${fmtTime(a.received_at)}` }, fmtTime(a.event_time)),
      h('td', {}, h('span', { class: `badge status-${String(a.event_status).toLowerCase()}`, 'data-testid': 'alert-status' }, a.event_status)),
      h('td', { 'data-testid': 'alert-host' }, a.hostname || a.agent_id || '—'),
      h('td', { class: 'mono', 'data-testid': 'alert-key' }, a.alert_key ?? ''),
      h('td', { 'data-testid': 'alert-labels' }, labelChips(a.labels)),
      h('td', { class: 'desc', 'data-testid': 'alert-description' }, description(a)),
      h('td', { class: 'actions' },
        h('button', {
          type: 'button',
          class: 'small',
          'data-testid': 'alert-diagnose',
          disabled: !a.agent_id,
          onclick: () => ctx.openStartForm({
            agent: { agent_id: a.agent_id, hostname: a.hostname },
            mode: 'diagnose',
            alert: [a.event_status, a.alert_key, a.description].filter(Boolean).join(': '),
            plugin: a.labels?.plugin ?? a.attrs?.plugin ?? '',
            target: a.labels?.mount ?? a.labels?.target ?? a.attrs?.target ?? '',
          }),
        }, 'Diagnose')),
    );
  }

  function renderAll() {
    if (alerts.length === 0) {
      replaceChildren(tbody, h('tr', {}, h('td', { colspan: 7, class: 'empty', 'data-testid': 'alerts-empty' },
        loading ? 'Loading…' : 'No alerts match.')));
    } else {
      replaceChildren(tbody, alerts.map((a) => row(a, false)));
    }
    more.hidden = !nextBeforeId;
    table.dataset.state = loading ? 'loading' : subscribed ? 'live' : 'loaded';
    info.textContent = loading ? 'Loading alerts…' : `${alerts.length} alert event(s) shown; new ones appear on top.`;
  }

  async function load(older = false) {
    const token = ++listToken;
    const params = { limit: PAGE };
    if (statusSelect.value) params.status = statusSelect.value;
    const label = labelInput.value.trim();
    // The hub filters by one exact `k=v`; anything else is filtered here.
    if (/^[^=\s,]+=[^\s,]*$/.test(label)) params.label = label;
    if (older && nextBeforeId != null) params.before_id = nextBeforeId;
    loading = !older;
    if (!older) renderAll();
    try {
      const result = await hub.request('alerts.list', params);
      if (token !== listToken) return;
      const list = (result.alerts ?? []).filter(matches);
      if (!older) {
        // Keep live alerts that arrived while the list was on its way.
        const live = alerts.filter((a) => !list.some((b) => b.id === a.id));
        alerts = [...live, ...list];
        seen.clear();
      } else {
        alerts = [...alerts, ...list.filter((a) => !seen.has(a.id))];
      }
      for (const a of alerts) seen.add(a.id);
      nextBeforeId = result.next_before_id ?? null;
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
    seen.clear();
    nextBeforeId = null;
    if (hub.ready) load();
  }

  ctx.onFrame((frame) => {
    if (frame.event !== 'alert' || !frame.alert) return;
    const a = frame.alert;
    if (seen.has(a.id) || !matches(a)) return;
    seen.add(a.id);
    alerts.unshift(a);
    if (tbody.querySelector('[data-testid="alerts-empty"]')) tbody.replaceChildren();
    tbody.prepend(row(a, true));
    info.textContent = `${alerts.length} alert event(s) shown; new ones appear on top.`;
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
          ['Time', 'Status', 'Host', 'Alert key', 'Labels', 'Description', ''].map((t) => h('th', { scope: 'col' }, t)))),
        tbody])),
    more,
    info,
  );
  return { el };
}
