// The alerts page (#/alerts): alerts (not events), grouped by host or by alert name, firing
// first; live `alert` frames from alerts.subscribe update them in place.
//
// Firing alerts are all loaded (alerts.list state=firing, page after page), so "firing first"
// holds however many resolved alerts changed since; resolved ones come a page at a time (newest
// change first, "Older resolved alerts" for more). The subscription is unfiltered (there is no
// unsubscribe, so the page filters frames itself); the lists are asked for with the filters.

import { h, replaceChildren, labelFilter, debounce, errorText, hostLink } from './dom.js';
import { alertRow, alertHeader, groupAlerts, statusOf } from './alertview.js';

// What the Status filter offers.
const STATUSES = ['Firing', 'Critical', 'Warning', 'Info', 'Resolved'];
const PAGE = 100;
// Firing alerts are loaded in full, up to this many (a guard, not a limit anyone should meet).
const MAX_FIRING = 5000;
const GROUP_KEY = 'tether.alerts.group_by';

/** The `alerts.list` filters of a Status choice: [firing params | null, resolved params | null]. */
function statusParams(status) {
  if (status === 'Resolved') return [null, { state: 'resolved' }];
  if (status === 'Firing') return [{ state: 'firing' }, null];
  if (status) return [{ state: 'firing', severity: status.toLowerCase() }, null];
  return [{ state: 'firing' }, { state: 'resolved' }];
}

function storedGroupBy() {
  try {
    return localStorage.getItem(GROUP_KEY) === 'alertname' ? 'alertname' : 'host';
  } catch {
    return 'host';
  }
}

export function alertsPage(ctx) {
  const { hub } = ctx;
  const alerts = new Map(); // alert_id → alert
  const fresh = new Set(); // alert ids changed live since the last render
  let resolvedCursor = null;
  let loading = true;
  let listToken = 0;
  let subscribed = false;
  let groupBy = storedGroupBy();
  let renderQueued = false;

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
  const groupButtons = ['host', 'alertname'].map((by) => h('button', {
    type: 'button',
    class: 'small',
    id: `alerts-group-${by}`,
    'data-testid': `alerts-group-${by}`,
    'aria-pressed': String(groupBy === by),
    onclick: () => setGroupBy(by),
  }, by === 'host' ? 'Host' : 'Alert name'));
  const groupsEl = h('div', { id: 'alert-groups', class: 'alert-groups', 'data-testid': 'alert-groups', 'data-state': 'loading', 'data-group-by': groupBy });
  const summary = h('p', { id: 'alerts-summary', class: 'summary', 'data-testid': 'alerts-summary' });
  const info = h('p', { id: 'alerts-info', class: 'muted', 'aria-live': 'polite' }, 'Loading alerts…');
  const more = h('button', { id: 'alerts-more', type: 'button', hidden: true, onclick: () => loadResolved(true) }, 'Older resolved alerts');

  const matches = (a) => {
    const status = statusSelect.value;
    if (status === 'Firing' && a.state !== 'firing') return false;
    if (status && status !== 'Firing' && statusOf(a) !== status) return false;
    return labelFilter(labelInput.value)(a.labels, [a.alert_key ?? '', a.hostname ?? '', a.title ?? '']);
  };

  function setGroupBy(by) {
    groupBy = by;
    try {
      localStorage.setItem(GROUP_KEY, by);
    } catch {
      // storage disabled: the choice lasts as long as the page
    }
    for (const b of groupButtons) b.setAttribute('aria-pressed', String(b.id === `alerts-group-${by}`));
    groupsEl.dataset.groupBy = by;
    render();
  }

  function groupHead(g) {
    const resolved = g.alerts.length - g.firing;
    const title = groupBy === 'host'
      ? (g.agent_id
        ? hostLink(g.agent_id, g.hostname)
        : h('span', { title: 'alerts no agent matched (see each alert for why)' }, 'Fleet (no host matched)'))
      : h('span', {}, g.key);
    return h('h2', { class: 'group-head' },
      h('span', { class: 'group-name', 'data-testid': 'alert-group-name' }, title),
      h('span', { class: 'group-counts muted small', 'data-testid': 'alert-group-counts' },
        g.firing ? h('span', { class: 'firing-count' }, `${g.firing} firing`) : null,
        g.firing && resolved ? ' · ' : null,
        resolved ? `${resolved} resolved` : null));
  }

  function render() {
    renderQueued = false;
    const list = [...alerts.values()].filter(matches);
    if (list.length === 0) {
      replaceChildren(groupsEl, h('p', { class: 'empty card', 'data-testid': 'alerts-empty' },
        loading ? 'Loading…' : 'No alerts match.'));
    } else {
      const showHost = groupBy !== 'host';
      replaceChildren(groupsEl, groupAlerts(list, groupBy).map((g) =>
        h('section', {
          class: 'alert-group',
          'data-testid': 'alert-group',
          'data-group': g.key,
          'data-firing': String(g.firing),
        },
        groupHead(g),
        h('div', { class: 'table-wrap' },
          h('table', { class: 'grid alerts-table' },
            alertHeader({ host: showHost }),
            h('tbody', {}, g.alerts.map((a) => alertRow(ctx, a, { host: showHost, fresh: fresh.has(a.alert_id) }))))))));
    }
    fresh.clear();
    const firing = list.filter((a) => a.state === 'firing').length;
    summary.textContent = loading ? '' : `${firing} firing · ${list.length - firing} resolved`;
    more.hidden = !resolvedCursor;
    groupsEl.dataset.state = loading ? 'loading' : subscribed ? 'live' : 'loaded';
    info.textContent = loading ? 'Loading alerts…' : 'Alerts update live; the firing ones come first.';
  }

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(render);
  }

  function baseParams() {
    const params = {};
    const label = labelInput.value.trim();
    // The hub filters by one exact `k=v`; anything else is filtered here.
    if (/^[^=\s,]+=[^\s,]*$/.test(label)) params.label = label;
    return params;
  }

  async function loadResolved(older) {
    const token = listToken;
    const [, resolvedParams] = statusParams(statusSelect.value);
    if (!resolvedParams) return;
    const params = { ...baseParams(), ...resolvedParams, limit: PAGE };
    if (older && resolvedCursor) params.cursor = resolvedCursor;
    try {
      const result = await hub.request('alerts.list', params);
      if (token !== listToken) return;
      for (const a of result.alerts ?? []) if (!alerts.has(a.alert_id)) alerts.set(a.alert_id, a);
      resolvedCursor = result.next_cursor ?? null;
      render();
    } catch (e) {
      if (token === listToken) info.textContent = `Cannot load alerts: ${errorText(e)}`;
    }
  }

  async function load() {
    const token = ++listToken;
    loading = true;
    resolvedCursor = null;
    render();
    const [firingParams, resolvedParams] = statusParams(statusSelect.value);
    try {
      const got = [];
      if (firingParams) {
        let cursor = null;
        do {
          const params = { ...baseParams(), ...firingParams, limit: 1000 };
          if (cursor) params.cursor = cursor;
          const result = await hub.request('alerts.list', params);
          if (token !== listToken) return;
          got.push(...(result.alerts ?? []));
          cursor = result.next_cursor ?? null;
        } while (cursor && got.length < MAX_FIRING);
      }
      if (resolvedParams) {
        const result = await hub.request('alerts.list', { ...baseParams(), ...resolvedParams, limit: PAGE });
        if (token !== listToken) return;
        got.push(...(result.alerts ?? []));
        resolvedCursor = result.next_cursor ?? null;
      }
      // Live changes that arrived while the lists were on their way are newer: keep them.
      const live = new Map([...alerts].filter(([, a]) => a.__live));
      alerts.clear();
      for (const a of got) alerts.set(a.alert_id, a);
      for (const [id, a] of live) alerts.set(id, a);
    } catch (e) {
      if (token !== listToken) return;
      info.textContent = `Cannot load alerts: ${errorText(e)}`;
      loading = false;
      return;
    }
    loading = false;
    render();
  }

  function reload() {
    alerts.clear();
    if (hub.ready) load();
    else render();
  }

  ctx.onFrame((frame) => {
    if (frame.event !== 'alert' || !frame.alert) return;
    const a = { ...frame.alert, __live: true };
    alerts.set(a.alert_id, a);
    fresh.add(a.alert_id);
    scheduleRender();
  });
  ctx.onReady(async () => {
    subscribed = false;
    try {
      await hub.subscribeOnce('alerts.subscribe');
      subscribed = true;
    } catch (e) {
      info.textContent = `Cannot subscribe to alerts: ${errorText(e)}`;
    }
    alerts.clear();
    await load();
  });
  render();

  const el = h(
    'section',
    { class: 'page alerts-page' },
    h('div', { class: 'page-head' },
      h('h1', {}, 'Alerts'),
      h('a', { href: '#/silences', class: 'button-link', 'data-testid': 'alerts-silences-link' }, 'Silences')),
    h('div', { class: 'toolbar' },
      h('span', { class: 'segmented', role: 'group', 'aria-label': 'Group by' },
        h('span', { class: 'seg-label' }, 'Group by'), groupButtons),
      h('label', { for: 'alerts-status' }, 'Status'),
      statusSelect,
      h('label', { for: 'alerts-label' }, 'Label (k=v)'),
      labelInput),
    summary,
    groupsEl,
    more,
    info,
  );
  return { el };
}
