// The fleet page (#/agents) and the start-a-session form.

import { h, append, replaceChildren, fmtTime, fmtAgo, fmtPct, labelChips, labelFilter, errorText, hostLink, startRefusal } from './dom.js';
import { pluginPicker } from './inspect.js';

export function fleetPage(ctx) {
  const { hub } = ctx;
  const agents = new Map(); // agent_id → agent
  const rows = new Map(); // agent_id → {tr, cells}
  let loaded = false;

  const filterInput = h('input', {
    id: 'agents-filter',
    type: 'search',
    placeholder: 'e.g. env=prod role=db',
    'data-testid': 'agents-filter',
    oninput: () => render(),
  });
  const connectedOnly = h('input', {
    id: 'agents-connected-only',
    type: 'checkbox',
    'data-testid': 'agents-connected-only',
    onchange: () => render(),
  });
  const tbody = h('tbody');
  const table = h('table', { id: 'agents-table', class: 'grid', 'data-testid': 'agents-table', 'data-state': 'loading' });
  const info = h('p', { id: 'agents-info', class: 'muted', 'aria-live': 'polite' }, 'Loading agents…');

  function makeRow(agent) {
    const cells = {
      host: h('td', { 'data-testid': 'agent-hostname' }),
      id: h('td', { class: 'mono small', 'data-testid': 'agent-id' }),
      state: h('td', { 'data-testid': 'agent-state' }),
      heartbeat: h('td', { 'data-testid': 'agent-heartbeat' }),
      labels: h('td', { 'data-testid': 'agent-labels' }),
      version: h('td', { 'data-testid': 'agent-version' }),
      proto: h('td', { 'data-testid': 'agent-proto' }),
    };
    const button = (mode, label) =>
      h('button', {
        type: 'button',
        class: 'small',
        'data-testid': `agent-${mode}`,
        onclick: () => ctx.openStartForm({ agent: agents.get(agent.agent_id) ?? agent, mode }),
      }, label);
    const buttons = [button('inspect', 'Inspect'), button('diagnose', 'Diagnose'), button('chat', 'Chat')];
    const tr = h(
      'tr',
      { 'data-testid': 'agent-row', 'data-agent-id': agent.agent_id },
      Object.values(cells),
      h('td', { class: 'actions' }, buttons),
    );
    return { tr, cells, buttons };
  }

  function fillRow(row, a) {
    const { cells } = row;
    row.tr.dataset.connected = a.connected ? 'true' : 'false';
    replaceChildren(
      cells.host,
      h('div', { class: 'strong' }, hostLink(a.agent_id, a.hostname || a.agent_id)),
      h('div', { class: 'muted small' }, [a.ip, a.os, a.arch].filter(Boolean).join(' · ')),
    );
    // The credential the agent signed in with, when the hub says (newer hubs do).
    const cred = a.credential ?? a.token_name;
    const credential = typeof cred === 'string' ? cred : typeof cred?.name === 'string' ? cred.name : '';
    replaceChildren(
      cells.id,
      a.agent_id,
      credential ? h('div', { class: 'muted small', 'data-testid': 'agent-credential' }, `credential ${credential}`) : null,
    );
    replaceChildren(
      cells.state,
      h('span', { class: `badge ${a.connected ? 'ok' : 'off'}`, 'data-testid': 'agent-connected' }, a.connected ? 'connected' : 'disconnected'),
      a.connected ? null : h('div', { class: 'muted small', 'data-ago': a.last_seen ?? '' }, a.last_seen ? `last seen ${fmtAgo(a.last_seen)}` : ''),
    );
    const hb = a.heartbeat;
    if (hb) {
      replaceChildren(
        cells.heartbeat,
        h('div', {}, fmtTime(hb.at), ' ', h('span', { class: 'muted small', 'data-ago': hb.at ?? '' }, hb.at ? `(${fmtAgo(hb.at)})` : '')),
        h('div', { class: 'muted small' },
          `cpu ${fmtPct(hb.cpu_pct)} · mem ${fmtPct(hb.mem_pct)} · ${hb.active_sessions ?? 0} session(s)`,
          hb.active_alerts ? ` · ${hb.active_alerts} alert(s)` : '',
          hb.dropped_alerts ? ` · ${hb.dropped_alerts} dropped` : ''),
      );
    } else replaceChildren(cells.heartbeat, h('span', { class: 'muted' }, 'none yet'));
    replaceChildren(cells.labels, labelChips(a.labels));
    cells.version.textContent = a.agent_version || '—';
    cells.proto.textContent = a.proto ?? '—';
    const why = startRefusal(hub) || (a.connected ? '' : 'the agent is not connected');
    for (const b of row.buttons) {
      b.disabled = Boolean(why);
      b.title = why;
    }
  }

  function render() {
    const match = labelFilter(filterInput.value);
    const onlyConnected = connectedOnly.checked;
    const list = [...agents.values()]
      .filter((a) => (!onlyConnected || a.connected) && match(a.labels, [a.hostname ?? '', a.agent_id ?? '']))
      .sort((a, b) => Number(b.connected) - Number(a.connected) || String(a.hostname).localeCompare(String(b.hostname)));
    const wanted = [];
    for (const a of list) {
      let row = rows.get(a.agent_id);
      if (!row) {
        row = makeRow(a);
        rows.set(a.agent_id, row);
      }
      fillRow(row, a);
      wanted.push(row.tr);
    }
    if (wanted.length === 0) {
      replaceChildren(tbody, h('tr', {}, h('td', { colspan: 8, class: 'empty', 'data-testid': 'agents-empty' },
        loaded ? (agents.size ? 'No agent matches the filter.' : 'No agent has registered yet.') : 'Loading…')));
    } else {
      // Keep existing rows (and their buttons) in place; only reorder.
      const same = wanted.length === tbody.children.length && wanted.every((tr, k) => tbody.children[k] === tr);
      if (!same) tbody.replaceChildren(...wanted);
    }
    table.dataset.state = loaded ? 'live' : 'loading';
    const connected = [...agents.values()].filter((a) => a.connected).length;
    info.textContent = loaded ? `${agents.size} agent(s), ${connected} connected; showing ${list.length}.` : 'Loading agents…';
  }

  ctx.onFrame((frame) => {
    if (frame.event === 'agent' && frame.agent?.agent_id) {
      agents.set(frame.agent.agent_id, frame.agent);
      render();
    }
  });
  ctx.onReady(async () => {
    try {
      await hub.subscribeOnce('agents.subscribe');
      const { agents: list } = await hub.request('agents.list');
      agents.clear();
      for (const a of list ?? []) agents.set(a.agent_id, a);
      loaded = true;
      render();
    } catch (e) {
      info.textContent = `Cannot load agents: ${errorText(e)}`;
    }
  });
  // Refresh the "… ago" texts.
  ctx.every(5000, () => render());
  render();

  const el = h(
    'section',
    { class: 'page' },
    h('div', { class: 'page-head' }, h('h1', {}, 'Fleet')),
    h('div', { class: 'toolbar' },
      h('label', { for: 'agents-filter' }, 'Filter by labels (k=v)'),
      filterInput,
      h('label', { class: 'check' }, connectedOnly, ' Connected only')),
    h('div', { class: 'table-wrap' },
      append(table,
        [h('thead', {}, h('tr', {},
          ['Host', 'Agent ID', 'State', 'Last heartbeat', 'Labels', 'Version', 'Proto', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
        tbody])),
    info,
  );
  return { el };
}

/**
 * The start form, as a modal dialog. `agent` needs agent_id (hostname for display); `mode` is
 * inspect, diagnose or chat; `alert`, `plugin` and `target` prefill the diagnose fields;
 * `alertId` (a stored alert of that agent) links a diagnosis to it (`params.alert_id`: the
 * session shows among the alert's diagnoses).
 */
export function openStartForm(ctx, { agent, mode = 'inspect', alert = '', plugin = '', target = '', alertId = null }) {
  document.getElementById('start-dialog')?.remove();
  const modeSelect = h('select', { id: 'start-mode', name: 'mode', 'data-testid': 'start-mode' },
    h('option', { value: 'inspect' }, 'Inspect — a report without a model'),
    h('option', { value: 'diagnose' }, 'Diagnose — investigate an alert'),
    h('option', { value: 'chat' }, 'Chat — talk to the agent'));
  modeSelect.value = mode;
  const picker = pluginPicker('start', { any: true, plugin, target });
  const pluginSelect = picker.plugin;
  const targetInput = picker.target;
  if (!pluginSelect.value && mode === 'inspect') pluginSelect.value = 'system';
  const alertInput = h('textarea', { id: 'start-alert', name: 'alert', rows: 3, 'data-testid': 'start-alert', '.value': alert,
    placeholder: 'What the alert says, e.g. "disk /var 93% full"' });
  const messageInput = h('textarea', { id: 'start-message', name: 'message', rows: 3, 'data-testid': 'start-message',
    placeholder: 'Optional: the first message' });
  const titleInput = h('input', { id: 'start-title', name: 'title', type: 'text', maxlength: 200, 'data-testid': 'start-title',
    placeholder: 'Optional' });
  const error = h('p', { id: 'start-error', class: 'error', role: 'alert', 'data-testid': 'start-error' });
  const submit = h('button', { id: 'start-submit', type: 'submit', class: 'primary', 'data-testid': 'start-submit' }, 'Start session');

  const field = (id, label, input, extra) => h('div', { class: 'field', 'data-field': id }, h('label', { for: input.id }, label), input, extra ?? null);
  const fields = {
    plugin: field('plugin', 'Plugin', pluginSelect),
    target: field('target', 'Target', targetInput, picker.hint),
    alert: field('alert', 'Alert text', alertInput),
    message: field('message', 'First message', messageInput),
  };

  const sync = () => {
    const m = modeSelect.value;
    fields.plugin.hidden = m === 'chat';
    fields.target.hidden = m === 'chat';
    fields.alert.hidden = m !== 'diagnose';
    fields.message.hidden = m !== 'chat';
    alertInput.required = m === 'diagnose';
    const anyOpt = pluginSelect.querySelector('option[data-any]');
    anyOpt.disabled = m === 'inspect';
    anyOpt.hidden = m === 'inspect';
    if (m === 'inspect' && !pluginSelect.value) pluginSelect.value = 'system';
    picker.sync();
  };
  modeSelect.addEventListener('change', sync);

  const dialog = h('dialog', { id: 'start-dialog', 'aria-labelledby': 'start-title-heading', 'data-testid': 'start-dialog' });
  const close = () => {
    dialog.close();
    dialog.remove();
  };
  const form = h(
    'form',
    {
      id: 'start-form',
      method: 'dialog',
      onsubmit: async (ev) => {
        ev.preventDefault();
        error.textContent = '';
        const m = modeSelect.value;
        const params = {};
        if (m === 'inspect' || m === 'diagnose') {
          if (pluginSelect.value) params.plugin = pluginSelect.value;
          if (targetInput.value.trim()) params.target = targetInput.value.trim();
        }
        if (m === 'diagnose') {
          if (!alertInput.value.trim()) {
            error.textContent = 'Describe the alert to diagnose.';
            return;
          }
          params.descriptions = alertInput.value.trim();
          if (alertId != null) params.alert_id = alertId;
        }
        if (m === 'chat' && messageInput.value.trim()) params.message = messageInput.value.trim();
        const req = { agent_id: agent.agent_id, mode: m, params };
        if (titleInput.value.trim()) req.title = titleInput.value.trim();
        submit.disabled = true;
        submit.textContent = 'Starting…';
        try {
          const { session_id } = await ctx.hub.request('session.create', req);
          close();
          ctx.navigate(`#/session/${encodeURIComponent(session_id)}`);
        } catch (e) {
          error.textContent = `The hub refused: ${errorText(e)}`;
          submit.disabled = false;
          submit.textContent = 'Start session';
        }
      },
    },
    h('h2', { id: 'start-title-heading' }, 'Start a session on ', h('span', { 'data-testid': 'start-host' }, agent.hostname || agent.agent_id)),
    h('p', { class: 'muted small mono' }, agent.agent_id),
    field('mode', 'Mode', modeSelect),
    fields.plugin,
    fields.target,
    fields.alert,
    fields.message,
    field('title', 'Title', titleInput),
    error,
    h('div', { class: 'actions' },
      h('button', { id: 'start-cancel', type: 'button', 'data-testid': 'start-cancel', onclick: close }, 'Cancel'),
      submit),
  );
  dialog.append(form);
  dialog.addEventListener('cancel', () => dialog.remove());
  document.body.append(dialog);
  sync();
  dialog.showModal();
  (mode === 'diagnose' && !alert ? alertInput : mode === 'chat' ? messageInput : modeSelect).focus();
  // Leaving the page closes the form.
  ctx.cleanups?.push(() => dialog.isConnected && close());
  return dialog;
}
