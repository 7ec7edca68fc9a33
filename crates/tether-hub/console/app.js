// tether hub console: routing, sign-in, the header, the sessions list.
//
// Routes (hash based): #/signin, #/agents, #/host/<agent_id>, #/alerts, #/alert/<id>,
// #/silences, #/sessions, #/session/<id>.
// Every page is a function (ctx, ...params) → {el, destroy?}; ctx gives it the hub connection
// and helpers whose listeners and timers are removed when the page goes away.

import { Hub } from './hub.js';
import { h, replaceChildren, fmtTime, errorText, who, stateText, hostLink } from './dom.js';
import { fleetPage, openStartForm } from './fleet.js';
import { alertsPage } from './alerts.js';
import { alertPage } from './alert.js';
import { silencesPage } from './silences.js';
import { hostPage } from './host.js';
import { sessionPage } from './session.js';

const TOKEN_KEY = 'tether.operator_token';

const hub = new Hub();
window.tetherHub = hub; // handy from the devtools console

const view = document.getElementById('view');
const statusEl = document.getElementById('conn-status');
const whoamiEl = document.getElementById('whoami');
const signOutBtn = document.getElementById('sign-out');
const bannerEl = document.getElementById('conn-banner');
const navEl = document.getElementById('nav');

let current = null; // {el, destroy, cleanups}
let signinMessage = '';

function storedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function storeToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the session lasts until reload
  }
}

export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// ---------------------------------------------------------------------------------------------
// Header: connection status, identity, banner.

function renderStatus() {
  const { status, statusText } = hub;
  statusEl.dataset.status = status;
  const label = {
    idle: 'signed out',
    connecting: 'connecting…',
    ready: 'connected',
    reconnecting: 'reconnecting…',
    refused: 'refused',
  }[status] ?? status;
  replaceChildren(statusEl, h('span', { class: 'dot', 'aria-hidden': 'true' }), label);
  statusEl.title = statusText || label;

  const id = hub.identity;
  if (id) {
    replaceChildren(
      whoamiEl,
      h('span', { 'data-testid': 'whoami-name' }, id.name ?? id.client_id),
      ' ',
      h('span', { class: `badge class-${id.class}`, 'data-testid': 'whoami-class' }, id.class),
    );
    whoamiEl.title = `client id ${id.client_id}`;
  } else if (status === 'idle' || status === 'refused') {
    whoamiEl.replaceChildren();
  }
  signOutBtn.hidden = !hub.token && status !== 'ready' && !storedToken();
  navEl.hidden = status === 'idle' || status === 'refused';

  if (status === 'reconnecting' || status === 'connecting') {
    replaceChildren(
      bannerEl,
      h('span', { 'data-testid': 'conn-banner-text' }, statusText || 'connecting to the hub…'),
      status === 'reconnecting'
        ? h('button', { type: 'button', class: 'link', onclick: () => hub.retryNow() }, 'Retry now')
        : null,
    );
    bannerEl.hidden = false;
    bannerEl.dataset.kind = 'warning';
  } else if (bannerEl.dataset.kind === 'warning') {
    bannerEl.hidden = true;
    bannerEl.dataset.kind = '';
  }
}

/** A notice at the top of the page that stays until dismissed (slow consumer, eviction). */
export function showBanner(text, kind = 'info') {
  replaceChildren(
    bannerEl,
    h('span', { 'data-testid': 'conn-banner-text' }, text),
    h('button', {
      type: 'button',
      class: 'link',
      'aria-label': 'Dismiss',
      onclick: () => {
        bannerEl.hidden = true;
        bannerEl.dataset.kind = '';
      },
    }, 'Dismiss'),
  );
  bannerEl.dataset.kind = kind;
  bannerEl.hidden = false;
}

hub.on('status', ({ status, text }) => {
  renderStatus();
  if (status === 'refused') {
    storeToken(null);
    signinMessage = text || 'the hub refused the token';
    navigate('#/signin');
  }
});

let evictedReason = null;

hub.on('ready', () => {
  renderStatus();
  if (evictedReason) {
    showBanner(`The hub dropped this connection (${evictedReason}); reconnected and re-attached.`, 'info');
    evictedReason = null;
  }
  if (location.hash === '#/signin' || location.hash === '' || location.hash === '#/') {
    navigate(sessionStorage.getItem('tether.after_signin') || '#/agents');
    sessionStorage.removeItem('tether.after_signin');
  }
});

hub.on('frame', (frame) => {
  if (frame.event === 'slow_consumer') {
    showBanner(`This page is falling behind the hub (${frame.queued} messages queued).`, 'warning');
  } else if (frame.event === 'evicted') {
    evictedReason = frame.reason || 'evicted';
  }
});

signOutBtn.addEventListener('click', () => {
  storeToken(null);
  hub.stop();
  signinMessage = 'Signed out.';
  navigate('#/signin');
});

// ---------------------------------------------------------------------------------------------
// Pages.

function makeCtx() {
  const cleanups = [];
  const ctx = {
    hub,
    navigate,
    cleanups,
    /** Runs `fn` now if connected, and again after every reconnect. */
    onReady(fn) {
      cleanups.push(hub.on('ready', () => fn()));
      if (hub.ready) fn();
    },
    onFrame(fn) {
      cleanups.push(hub.on('frame', fn));
    },
    every(ms, fn) {
      const t = setInterval(fn, ms);
      cleanups.push(() => clearInterval(t));
    },
    openStartForm: (opts) => openStartForm(ctx, opts),
  };
  return ctx;
}

function signinPage() {
  const input = h('input', {
    id: 'token',
    name: 'token',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
    spellcheck: 'false',
    'data-testid': 'signin-token',
    '.value': storedToken() ?? '',
  });
  const error = h('p', { id: 'signin-error', class: 'error', role: 'alert', 'data-testid': 'signin-error' });
  const state = h('p', { id: 'signin-state', class: 'muted', 'aria-live': 'polite' });
  if (signinMessage) {
    error.textContent = signinMessage === 'Signed out.' ? '' : capitalize(signinMessage) + '.';
    if (signinMessage === 'Signed out.') state.textContent = signinMessage;
    signinMessage = '';
  }
  const form = h(
    'form',
    {
      id: 'signin-form',
      class: 'card narrow',
      onsubmit: (ev) => {
        ev.preventDefault();
        const token = input.value.trim();
        if (!token) return;
        error.textContent = '';
        state.textContent = 'Connecting…';
        storeToken(token);
        hub.start(token);
      },
    },
    h('h1', {}, 'Sign in to the tether hub'),
    h('label', { for: 'token' }, 'Operator token'),
    input,
    h('p', { class: 'hint' }, 'The token is kept in this browser (localStorage) until you sign out.'),
    h('div', { class: 'actions' }, h('button', { id: 'signin-submit', type: 'submit', class: 'primary' }, 'Sign in')),
    error,
    state,
  );
  const off = hub.on('status', ({ status, text }) => {
    if (status === 'reconnecting') state.textContent = capitalize(text);
    if (status === 'refused') {
      state.textContent = '';
      error.textContent = capitalize(text || 'the hub refused the token') + '.';
    }
  });
  return { el: h('section', { class: 'page signin' }, form), destroy: off, focus: input };
}

function capitalize(s) {
  return s ? s[0].toUpperCase() + s.slice(1) : s;
}

function sessionsPage(ctx) {
  const tbody = h('tbody');
  const info = h('p', { id: 'sessions-info', class: 'muted', 'aria-live': 'polite' });
  const load = async () => {
    try {
      const { sessions } = await hub.request('session.list');
      renderRows(sessions ?? []);
      info.textContent = `${(sessions ?? []).length} session(s) · updated ${fmtTime(new Date().toISOString())}`;
    } catch (e) {
      info.textContent = `Cannot list sessions: ${errorText(e)}`;
    }
  };
  const renderRows = (sessions) => {
    sessions.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    if (sessions.length === 0) {
      replaceChildren(tbody, h('tr', {}, h('td', { colspan: 7, class: 'empty' }, 'No sessions yet. Start one from the Fleet page.')));
      return;
    }
    replaceChildren(
      tbody,
      sessions.map((s) =>
        h(
          'tr',
          { 'data-testid': 'session-row', 'data-session-id': s.session_id },
          h('td', {}, h('a', { href: `#/session/${encodeURIComponent(s.session_id)}`, 'data-testid': 'session-link', class: 'mono' }, s.session_id)),
          h('td', { 'data-testid': 'session-row-host' }, s.agent_id ? hostLink(s.agent_id, s.hostname) : '—'),
          h('td', {}, h('span', { class: 'badge' }, s.mode)),
          h('td', {}, h('span', { class: `badge state-${s.state}`, 'data-testid': 'session-row-state', 'data-state': s.state ?? '', title: s.state ?? '' }, stateText(s.state))),
          h('td', {}, s.title ?? h('span', { class: 'muted' }, '—')),
          h('td', {}, fmtTime(s.created_at)),
          h('td', { title: (s.clients ?? []).map(who).join(', ') }, String((s.clients ?? []).length)),
        ),
      ),
    );
  };
  ctx.onReady(load);
  ctx.every(10000, () => hub.ready && load());
  const el = h(
    'section',
    { class: 'page' },
    h('div', { class: 'page-head' },
      h('h1', {}, 'Sessions'),
      h('button', { id: 'sessions-refresh', type: 'button', onclick: load }, 'Refresh')),
    h('div', { class: 'table-wrap' },
      h('table', { id: 'sessions-table', class: 'grid' },
        h('thead', {}, h('tr', {},
          ['Session', 'Host', 'Mode', 'State', 'Title', 'Created', 'Clients'].map((t) => h('th', { scope: 'col' }, t)))),
        tbody)),
    info,
  );
  return { el };
}

function notFoundPage() {
  return {
    el: h('section', { class: 'page' }, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/agents' }, 'Go to the fleet'))),
  };
}

const ROUTES = [
  [/^#\/agents$/, fleetPage, 'agents'],
  [/^#\/host\/([^/]+)$/, hostPage, 'agents'],
  [/^#\/alerts$/, alertsPage, 'alerts'],
  [/^#\/alert\/([^/]+)$/, alertPage, 'alerts'],
  [/^#\/silences$/, silencesPage, 'silences'],
  [/^#\/sessions$/, sessionsPage, 'sessions'],
  [/^#\/session\/([^/]+)$/, sessionPage, 'sessions'],
];

function route() {
  let hash = location.hash || '';
  if (hash === '' || hash === '#' || hash === '#/') hash = '#/agents';

  const signedIn = hub.token || storedToken();
  if (hash !== '#/signin' && !signedIn) {
    sessionStorage.setItem('tether.after_signin', hash);
    if (location.hash !== '#/signin') {
      location.replace('#/signin');
      return; // hashchange routes again
    }
  }
  if (hash !== '#/signin' && hub.status === 'idle' && storedToken()) hub.start(storedToken());

  if (current) {
    for (const fn of current.cleanups) fn();
    current.destroy?.();
  }
  const ctx = makeCtx();
  let page;
  let nav = null;
  if (hash === '#/signin') {
    page = signinPage(ctx);
  } else {
    const match = ROUTES.map(([re, fn, n]) => [re.exec(hash), fn, n]).find(([m]) => m);
    if (match) {
      const [m, fn, n] = match;
      nav = n;
      page = fn(ctx, ...m.slice(1).map(decodeURIComponent));
    } else page = notFoundPage(ctx);
  }
  current = { ...page, cleanups: ctx.cleanups };
  for (const a of navEl.querySelectorAll('a[data-nav]')) {
    if (a.dataset.nav === nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  replaceChildren(view, page.el);
  page.focus?.focus();
  renderStatus();
}

window.addEventListener('hashchange', route);
route();
