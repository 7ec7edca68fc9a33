// Silences: the silences page (#/silences: silence.list, silence.expire) and the form that
// creates one (silence.create), opened from an alert (prefilled with its labels as equality
// matchers) or empty from the silences page. Observers see the buttons disabled, with the
// reason (the hub refuses them anyway).

import { h, append, replaceChildren, timeEl, fmtIn, errorText, actRefusal, debounce } from './dom.js';
import { matcherText, silenceMatchers, titleText, alertHref, statusOf } from './alertview.js';

const DURATIONS = ['30m', '1h', '2h', '4h', '12h', '1d', '7d'];

/** A silence's state (`active`, `expired`) as a badge. */
function stateBadge(s) {
  return h('span', { class: `badge silence-${s.state}`, 'data-testid': 'silence-state' }, s.state);
}

function matcherChips(matchers) {
  return h('span', { class: 'chips' }, (matchers ?? []).map((m) =>
    h('span', { class: 'chip', 'data-testid': 'silence-matcher-chip' }, matcherText(m))));
}

export function silencesPage(ctx) {
  const { hub } = ctx;
  let silences = [];
  let covered = new Map(); // silence_id → the firing alerts it covers (the hub says which)
  let loaded = false;

  const stateSelect = h('select', { id: 'silences-state', 'data-testid': 'silences-state', onchange: () => load() },
    h('option', { value: 'active' }, 'Active'),
    h('option', { value: 'expired' }, 'Expired'),
    h('option', { value: 'all' }, 'All'));
  const newBtn = h('button', {
    id: 'silence-new',
    type: 'button',
    'data-testid': 'silence-new',
    onclick: () => openSilenceForm(ctx, { onCreated: () => load() }),
  }, 'New silence');
  const tbody = h('tbody');
  const table = h('table', { id: 'silences-table', class: 'grid', 'data-testid': 'silences-table', 'data-state': 'loading' });
  const info = h('p', { id: 'silences-info', class: 'muted', 'aria-live': 'polite' }, 'Loading silences…');
  const refusalEl = h('p', { class: 'notice-box', 'data-testid': 'silences-refusal', hidden: true });

  function render() {
    const why = actRefusal(hub);
    newBtn.disabled = Boolean(why);
    newBtn.title = why;
    refusalEl.hidden = hub.identity?.class !== 'observer';
    refusalEl.textContent = refusalEl.hidden ? '' : why;
    if (silences.length === 0) {
      replaceChildren(tbody, h('tr', {}, h('td', { colspan: 8, class: 'empty', 'data-testid': 'silences-empty' },
        loaded ? `No ${stateSelect.value === 'all' ? '' : `${stateSelect.value} `}silences.` : 'Loading…')));
    } else {
      replaceChildren(tbody, silences.map((s) => {
        const expireBtn = s.state === 'active'
          ? h('button', {
            type: 'button',
            class: 'small danger',
            'data-testid': 'silence-expire',
            disabled: Boolean(why),
            title: why || 'End this silence now',
            onclick: (ev) => expire(s, ev.currentTarget),
          }, 'Expire')
          : null;
        return h('tr', { 'data-testid': 'silence-row', 'data-silence-id': String(s.silence_id), 'data-state': s.state },
          h('td', { class: 'mono' }, String(s.silence_id)),
          h('td', {}, stateBadge(s)),
          h('td', { 'data-testid': 'silence-matchers' }, matcherChips(s.matchers)),
          h('td', { 'data-testid': 'silence-covers' }, coversCell(s)),
          h('td', { class: 'pre-wrap', 'data-testid': 'silence-comment' }, s.comment ?? ''),
          h('td', {}, h('div', { 'data-testid': 'silence-created-by' }, s.created_by ?? '?'), h('div', { class: 'muted small' }, timeEl(s.created_at))),
          h('td', { 'data-testid': 'silence-ends' },
            h('div', {}, timeEl(s.ends_at)),
            s.state === 'active'
              ? h('div', { class: 'muted small' }, fmtIn(s.ends_at))
              : s.expired_by ? h('div', { class: 'muted small', 'data-testid': 'silence-expired-by' }, `expired by ${s.expired_by}`) : null),
          h('td', { class: 'actions' }, expireBtn, h('span', { class: 'error small', 'data-testid': 'silence-error' })));
      }));
    }
    table.dataset.state = loaded ? 'live' : 'loading';
    info.textContent = loaded ? `${silences.length} silence(s). A silence's alerts notify nobody and are not diagnosed automatically.` : 'Loading silences…';
  }

  function coversCell(s) {
    if (s.state !== 'active') return h('span', { class: 'muted' }, '—');
    const list = covered.get(s.silence_id) ?? [];
    if (list.length === 0) return h('span', { class: 'muted' }, 'none now');
    const shown = list.slice(0, 5);
    return h('ul', { class: 'plain-list small' },
      shown.map((a) => h('li', {},
        h('a', { href: alertHref(a), 'data-testid': 'silence-covered-alert', 'data-alert-id': String(a.alert_id) }, titleText(a)),
        h('span', { class: 'muted' }, ` · ${a.hostname || 'fleet'} · ${statusOf(a)}`))),
      list.length > shown.length ? h('li', { class: 'muted' }, `and ${list.length - shown.length} more`) : null);
  }

  async function expire(s, btn) {
    btn.disabled = true;
    btn.textContent = 'Expiring…';
    try {
      await hub.request('silence.expire', { silence_id: s.silence_id });
      await load();
    } catch (e) {
      btn.disabled = false;
      btn.textContent = 'Expire';
      const err = btn.parentElement?.querySelector('[data-testid="silence-error"]');
      if (err) err.textContent = `The hub refused: ${errorText(e)}`;
    }
  }

  let token = 0;
  async function load() {
    const mine = ++token;
    try {
      const [r, firing] = await Promise.all([
        hub.request('silence.list', { state: stateSelect.value }),
        hub.request('alerts.list', { state: 'firing', limit: 1000 }),
      ]);
      if (mine !== token) return;
      silences = r.silences ?? [];
      covered = new Map();
      for (const a of firing.alerts ?? []) {
        for (const id of a.silenced_by ?? []) {
          if (!covered.has(id)) covered.set(id, []);
          covered.get(id).push(a);
        }
      }
      loaded = true;
      render();
    } catch (e) {
      if (mine === token) info.textContent = `Cannot list silences: ${errorText(e)}`;
    }
  }

  // A silence created, expired or run out shows in the alerts it covers: reload then.
  const reloadSoon = debounce(() => hub.ready && load(), 300);
  ctx.onFrame((frame) => {
    if (frame.event === 'alert' && (frame.change === 'silenced' || frame.change === 'unsilenced')) reloadSoon();
  });
  ctx.onReady(async () => {
    try {
      await hub.subscribeOnce('alerts.subscribe');
    } catch {
      // the list still loads; it refreshes on its own below
    }
    load();
  });
  ctx.every(15000, () => hub.ready && load());
  ctx.cleanups.push(hub.on('status', () => render()));
  render();

  const el = h('section', { class: 'page silences-page' },
    h('div', { class: 'page-head' },
      h('h1', {}, 'Silences'),
      h('div', { class: 'actions' }, h('a', { href: '#/alerts', class: 'button-link' }, 'Alerts'), newBtn)),
    refusalEl,
    h('div', { class: 'toolbar' }, h('label', { for: 'silences-state' }, 'Show'), stateSelect),
    h('div', { class: 'table-wrap' },
      append(table, [
        h('thead', {}, h('tr', {}, ['ID', 'State', 'Matchers', 'Firing alerts it covers', 'Comment', 'Created by', 'Ends', ''].map((t) => h('th', { scope: 'col' }, t)))),
        tbody])),
    info);
  return { el };
}

/**
 * The new-silence form, as a modal dialog. With `alert`, its matchers start as the alert's
 * labels (see `silenceMatchers`); `onCreated(silence)` runs once the hub took it.
 */
export function openSilenceForm(ctx, { alert = null, onCreated = null } = {}) {
  document.getElementById('silence-dialog')?.remove();
  const rowsEl = h('div', { class: 'matchers', id: 'silence-matchers', 'data-testid': 'silence-form-matchers' });
  let n = 0;

  function matcherRow(m = { name: '', value: '', is_regex: false }) {
    const k = n++;
    const name = h('input', { type: 'text', id: `silence-m${k}-name`, 'aria-label': 'Label name', 'data-testid': 'silence-matcher-name', '.value': m.name, spellcheck: 'false', autocomplete: 'off' });
    const op = h('select', { id: `silence-m${k}-op`, 'aria-label': 'Match', 'data-testid': 'silence-matcher-op' },
      h('option', { value: 'eq' }, '='),
      h('option', { value: 're' }, '=~ (regex)'));
    op.value = m.is_regex ? 're' : 'eq';
    const value = h('input', { type: 'text', id: `silence-m${k}-value`, 'aria-label': 'Value', 'data-testid': 'silence-matcher-value', '.value': m.value, spellcheck: 'false', autocomplete: 'off' });
    const row = h('div', { class: 'matcher-row', 'data-testid': 'silence-matcher' },
      name, op, value,
      h('button', { type: 'button', class: 'small', 'aria-label': 'Remove this matcher', 'data-testid': 'silence-matcher-remove', onclick: () => row.remove() }, '×'));
    row.read = () => ({ name: name.value.trim(), value: value.value, is_regex: op.value === 're' });
    return row;
  }

  for (const m of alert ? silenceMatchers(alert) : [undefined]) rowsEl.append(matcherRow(m));

  const duration = h('input', { type: 'text', id: 'silence-duration', list: 'silence-durations', 'data-testid': 'silence-duration', '.value': '2h', spellcheck: 'false', autocomplete: 'off' });
  const durations = h('datalist', { id: 'silence-durations' }, DURATIONS.map((d) => h('option', { value: d })));
  const comment = h('textarea', { id: 'silence-comment', rows: 3, maxlength: 4096, 'data-testid': 'silence-comment-input', placeholder: 'Why (shown with the silence)' });
  const error = h('p', { class: 'error', role: 'alert', 'data-testid': 'silence-form-error' });
  const submit = h('button', { type: 'submit', class: 'primary', id: 'silence-submit', 'data-testid': 'silence-submit' }, 'Create silence');
  const why = actRefusal(ctx.hub);
  if (why) {
    submit.disabled = true;
    submit.title = why;
  }

  const dialog = h('dialog', { id: 'silence-dialog', 'aria-labelledby': 'silence-heading', 'data-testid': 'silence-dialog' });
  const close = () => {
    dialog.close();
    dialog.remove();
  };
  // The checks are the form's own (with messages), not the browser's `required` bubbles.
  const form = h('form', {
    id: 'silence-form',
    method: 'dialog',
    novalidate: true,
    onsubmit: async (ev) => {
      ev.preventDefault();
      error.textContent = '';
      const matchers = [...rowsEl.querySelectorAll('[data-testid="silence-matcher"]')].map((r) => r.read());
      if (matchers.length === 0) {
        error.textContent = 'Add at least one matcher.';
        return;
      }
      const blank = matchers.findIndex((m) => !m.name);
      if (blank >= 0) {
        error.textContent = `Matcher ${blank + 1} has no label name.`;
        return;
      }
      if (!comment.value.trim()) {
        error.textContent = 'Say why (the comment is shown with the silence).';
        return;
      }
      const d = duration.value.trim();
      if (!d) {
        error.textContent = 'Give a duration, e.g. 2h.';
        return;
      }
      const params = { matchers, duration: /^\d+$/.test(d) ? Number(d) : d, comment: comment.value.trim() };
      submit.disabled = true;
      submit.textContent = 'Creating…';
      try {
        const r = await ctx.hub.request('silence.create', params);
        close();
        onCreated?.(r.silence);
      } catch (e) {
        error.textContent = `The hub refused: ${errorText(e)}`;
        submit.disabled = false;
        submit.textContent = 'Create silence';
      }
    },
  },
  h('h2', { id: 'silence-heading' }, alert ? ['Silence ', h('q', {}, titleText(alert))] : 'New silence'),
  h('p', { class: 'muted small' },
    'Alerts whose labels match every matcher are silenced: they notify nobody and are not diagnosed automatically. ',
    'Besides its labels, an alert matches on ', h('code', {}, 'hostname'), ', ', h('code', {}, 'agent_id'), ', ',
    h('code', {}, 'source'), ' and ', h('code', {}, 'alert_key'), '; a regex must match the whole value.'),
  h('fieldset', { class: 'field' }, h('legend', {}, 'Matchers'), rowsEl,
    h('button', { type: 'button', class: 'small', 'data-testid': 'silence-matcher-add', onclick: () => rowsEl.append(matcherRow()) }, 'Add matcher')),
  h('div', { class: 'field' }, h('label', { for: 'silence-duration' }, 'Duration'), duration, durations,
    h('p', { class: 'hint' }, 'e.g. 30m, 2h, 1d 12h, or seconds')),
  h('div', { class: 'field' }, h('label', { for: 'silence-comment' }, 'Comment'), comment),
  why ? h('p', { class: 'notice-box' }, why) : null,
  error,
  h('div', { class: 'actions' },
    h('button', { type: 'button', id: 'silence-cancel', 'data-testid': 'silence-cancel', onclick: close }, 'Cancel'),
    submit));
  dialog.append(form);
  dialog.addEventListener('cancel', () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  comment.focus();
  ctx.cleanups?.push(() => dialog.isConnected && close());
  return dialog;
}
