// The host page (#/host/<agent_id>): one agent — its labels, state, last heartbeat — with its
// alerts (firing first, live from alerts.subscribe) and its sessions. Reached by clicking a
// host anywhere (the fleet, alerts, sessions and session pages).

import { h, replaceChildren, timeEl, fmtAgo, fmtPct, labelChips, errorText, stateText, who, startRefusal } from './dom.js';
import { alertRow, alertHeader, compareAlerts } from './alertview.js';

const RESOLVED_SHOWN = 50;

export function hostPage(ctx, agentId) {
  const { hub } = ctx;
  let agent = null;
  let loadedAgent = false;
  const alerts = new Map();
  let alertsLoaded = false;
  let sessions = null;

  const titleEl = h('span', { id: 'host-title', 'data-testid': 'host-title' }, agentId);
  const stateEl = h('span', { id: 'host-state', 'data-testid': 'host-state' });
  const pageError = h('p', { id: 'host-error', class: 'error', role: 'alert', 'data-testid': 'host-error' });
  const detailsEl = h('dl', { class: 'kv small', id: 'host-details', 'data-testid': 'host-details' });
  const labelsEl = h('div', { id: 'host-labels', 'data-testid': 'host-labels' });
  const heartbeatEl = h('div', { id: 'host-heartbeat', 'data-testid': 'host-heartbeat' });
  const alertsBody = h('tbody', { id: 'host-alerts', 'data-testid': 'host-alerts' });
  const alertsInfo = h('p', { class: 'muted small', 'data-testid': 'host-alerts-info' });
  const sessionsBody = h('tbody', { id: 'host-sessions', 'data-testid': 'host-sessions' });
  const sessionsInfo = h('p', { class: 'muted small' });

  const button = (mode, label) => h('button', {
    type: 'button',
    'data-testid': `host-${mode}`,
    onclick: () => agent && ctx.openStartForm({ agent, mode }),
  }, label);
  const buttons = [button('inspect', 'Inspect'), button('diagnose', 'Diagnose'), button('chat', 'Chat')];

  function renderAgent() {
    if (!agent) {
      titleEl.textContent = loadedAgent ? 'Host not found' : agentId;
      stateEl.replaceChildren();
      for (const b of buttons) b.disabled = true;
      return;
    }
    const a = agent;
    titleEl.textContent = a.hostname || a.agent_id;
    replaceChildren(stateEl,
      h('span', { class: `badge ${a.connected ? 'ok' : 'off'}`, 'data-testid': 'host-connected' }, a.connected ? 'connected' : 'disconnected'),
      a.connected ? null : h('span', { class: 'muted small' }, ` last seen ${fmtAgo(a.last_seen)}`));
    const why = startRefusal(hub) || (a.connected ? '' : 'The agent is not connected.');
    for (const b of buttons) {
      b.disabled = Boolean(why);
      b.title = why;
    }
    const cred = a.credential ?? a.token_name;
    replaceChildren(detailsEl, [
      ['Agent ID', h('span', { class: 'mono' }, a.agent_id)],
      ['IP', a.ip || '—'],
      ['System', [a.os, a.arch].filter(Boolean).join(' · ') || '—'],
      ['Agent version', a.agent_version || '—'],
      ['Protocol', a.proto != null ? String(a.proto) : '—'],
      ['Credential', typeof cred === 'string' ? cred : 'the enrollment token'],
      ['First seen', timeEl(a.first_seen)],
      ['Last seen', timeEl(a.last_seen)],
      ['Plugins', (a.plugins ?? []).join(', ') || '—'],
    ].map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
    replaceChildren(labelsEl, labelChips(a.labels));
    const hb = a.heartbeat;
    replaceChildren(heartbeatEl, hb
      ? [
        h('p', { class: 'strong', 'data-testid': 'host-heartbeat-at' }, timeEl(hb.at), ' ', h('span', { class: 'muted small' }, `(${fmtAgo(hb.at)})`)),
        h('dl', { class: 'kv small' },
          [['CPU', fmtPct(hb.cpu_pct)], ['Memory', fmtPct(hb.mem_pct)], ['Sessions', String(hb.active_sessions ?? 0)],
            ['Alerts (agent)', String(hb.active_alerts ?? 0)], hb.dropped_alerts ? ['Dropped alerts', String(hb.dropped_alerts)] : null]
            .filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
      ]
      : h('p', { class: 'muted' }, 'No heartbeat yet.'));
  }

  function renderAlerts() {
    const list = [...alerts.values()].sort(compareAlerts);
    const firing = list.filter((a) => a.state === 'firing');
    const resolved = list.filter((a) => a.state !== 'firing').slice(0, RESOLVED_SHOWN);
    const shown = [...firing, ...resolved];
    if (shown.length === 0) {
      replaceChildren(alertsBody, h('tr', {}, h('td', { colspan: 6, class: 'empty', 'data-testid': 'host-alerts-empty' },
        alertsLoaded ? 'No alerts about this host.' : 'Loading…')));
    } else {
      replaceChildren(alertsBody, shown.map((a) => alertRow(ctx, a, { host: false })));
    }
    alertsInfo.textContent = alertsLoaded ? `${firing.length} firing · ${resolved.length} resolved shown (the newest ${RESOLVED_SHOWN} at most).` : '';
  }

  function renderSessions() {
    if (sessions === null) {
      replaceChildren(sessionsBody, h('tr', {}, h('td', { colspan: 5, class: 'empty' }, 'Loading…')));
      return;
    }
    const list = [...sessions].sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    if (list.length === 0) {
      replaceChildren(sessionsBody, h('tr', {}, h('td', { colspan: 5, class: 'empty', 'data-testid': 'host-sessions-empty' }, 'No sessions on this host.')));
    } else {
      replaceChildren(sessionsBody, list.map((s) => h('tr', { 'data-testid': 'host-session-row', 'data-session-id': s.session_id },
        h('td', {}, h('a', { href: `#/session/${encodeURIComponent(s.session_id)}`, class: 'mono', 'data-testid': 'host-session-link' }, s.session_id)),
        h('td', {}, h('span', { class: 'badge' }, s.mode)),
        h('td', {}, h('span', { class: `badge state-${s.state}`, 'data-state': s.state ?? '' }, stateText(s.state))),
        h('td', {}, s.title ?? h('span', { class: 'muted' }, '—')),
        h('td', { title: (s.clients ?? []).map(who).join(', ') }, timeEl(s.created_at)))));
    }
    sessionsInfo.textContent = `${list.length} session(s).`;
  }

  async function loadAgent() {
    try {
      const { agents } = await hub.request('agents.list');
      agent = (agents ?? []).find((a) => a.agent_id === agentId) ?? null;
      loadedAgent = true;
      pageError.textContent = agent ? '' : `No such host: the hub knows no agent ${agentId}.`;
      renderAgent();
    } catch (e) {
      pageError.textContent = `Cannot load the host: ${errorText(e)}`;
    }
  }

  async function loadAlerts() {
    try {
      const [firing, resolved] = await Promise.all([
        hub.request('alerts.list', { agent_id: agentId, state: 'firing', limit: 1000 }),
        hub.request('alerts.list', { agent_id: agentId, state: 'resolved', limit: RESOLVED_SHOWN }),
      ]);
      const live = [...alerts.values()].filter((a) => a.__live);
      alerts.clear();
      for (const a of [...(firing.alerts ?? []), ...(resolved.alerts ?? [])]) alerts.set(a.alert_id, a);
      for (const a of live) alerts.set(a.alert_id, a);
      alertsLoaded = true;
      renderAlerts();
    } catch (e) {
      alertsInfo.textContent = `Cannot load alerts: ${errorText(e)}`;
    }
  }

  async function loadSessions() {
    try {
      const r = await hub.request('session.list', { agent_id: agentId });
      sessions = r.sessions ?? [];
      renderSessions();
    } catch (e) {
      sessionsInfo.textContent = `Cannot list sessions: ${errorText(e)}`;
    }
  }

  const section = (title, body, id) => h('section', { class: 'card section', id }, h('h2', {}, title), body);
  const el = h('section', { class: 'page host-page', 'data-agent-id': agentId },
    h('p', { class: 'crumbs small' }, h('a', { href: '#/agents' }, '← Fleet')),
    h('div', { class: 'page-head' },
      h('div', { class: 'page-title' }, h('h1', {}, titleEl), h('div', { class: 'meta' }, stateEl)),
      h('div', { class: 'actions page-actions' }, buttons)),
    pageError,
    h('div', { class: 'host-grid' },
      section('Labels', labelsEl, 'host-labels-section'),
      section('Last heartbeat', heartbeatEl, 'host-heartbeat-section'),
      section('Agent', detailsEl, 'host-details-section')),
    section('Alerts', [
      h('div', { class: 'table-wrap' },
        h('table', { class: 'grid alerts-table', id: 'host-alerts-table', 'data-testid': 'host-alerts-table' }, alertHeader({ host: false }), alertsBody)),
      alertsInfo], 'host-alerts-section'),
    section('Sessions', [
      h('div', { class: 'table-wrap' },
        h('table', { class: 'grid', id: 'host-sessions-table', 'data-testid': 'host-sessions-table' },
          h('thead', {}, h('tr', {}, ['Session', 'Mode', 'State', 'Title', 'Created'].map((t) => h('th', { scope: 'col' }, t)))),
          sessionsBody)),
      sessionsInfo], 'host-sessions-section'));

  ctx.onFrame((frame) => {
    if (frame.event === 'agent' && frame.agent?.agent_id === agentId) {
      agent = frame.agent;
      loadedAgent = true;
      pageError.textContent = '';
      renderAgent();
    } else if (frame.event === 'alert' && frame.alert) {
      const a = frame.alert;
      // An alert routed elsewhere since (a fleet alert re-routed) leaves this page.
      if (a.agent_id === agentId) alerts.set(a.alert_id, { ...a, __live: true });
      else alerts.delete(a.alert_id);
      renderAlerts();
    }
  });
  ctx.onReady(async () => {
    await Promise.allSettled([hub.subscribeOnce('agents.subscribe'), hub.subscribeOnce('alerts.subscribe')]);
    await Promise.all([loadAgent(), loadAlerts(), loadSessions()]);
    el.dataset.state = 'live';
  });
  // Sessions have no subscription: refresh them, and the "… ago" texts.
  ctx.every(10000, () => {
    if (!hub.ready) return;
    loadSessions();
    renderAgent();
  });
  renderAgent();
  renderAlerts();
  renderSessions();
  return { el };
}
