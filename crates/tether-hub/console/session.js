// The session page (#/session/<id>): attach with after_seq (0 the first time, so a reload gets
// the whole history; the last seen seq after a reconnect), render the replay and then live
// events, and offer input, cancel and permission answers.
//
// Bookkeeping: `lastSeq` is the last event rendered (events at or below it are duplicates and
// skipped). The attach snapshot describes the session as of `snapshot.last_seq`, so replayed
// events (seq <= that) are rendered in the transcript but do not change the session's state,
// the running turn or the client list; only later (live) events do.

import { h, replaceChildren, fmtTime, fmtDuration, errorText, who, stateText, hostLink } from './dom.js';
import { renderMarkdown } from './markdown.js';
import { pluginPicker, inspectionText } from './inspect.js';

const ANSWER_REFUSALS = {
  human_answer_required: 'Only a human-class operator may answer this prompt (policy: human).',
  agent_cannot_self_approve: 'An agent-class client cannot approve a request raised in its own turn.',
  already_resolved: 'Someone else answered this prompt first.',
  no_pending_permission: 'This prompt is no longer pending.',
  forbidden: 'This credential may not answer prompts (observers never answer).',
  session_closed: 'The session is closed.',
};

const STOP_TEXT = {
  completed: 'Turn completed',
  cancelled: 'Turn cancelled',
  error: 'Turn failed',
  max_rounds: 'Turn stopped: too many model calls (max_rounds)',
};

const CAUSE_TEXT = {
  no_eligible_answerer: 'nobody who may answer was attached',
  timeout: 'nobody answered in time',
  cancelled: 'the turn was cancelled',
};

export function sessionPage(ctx, sessionId) {
  const { hub } = ctx;

  let lastSeq = 0;
  let snapshotSeq = 0;
  let attaching = false;
  let buffer = null; // frames that arrive while the attach reply is on its way
  let closed = false;
  let state = null;
  let mode = null; // the session's mode, from the attach snapshot
  let missing = false; // the hub does not know the session
  let sending = false;
  let runningTurn = null; // {turn_id, originator}
  let pendingFromSnapshot = [];
  const clients = new Map();
  const queued = new Map(); // input_id → {text, originator, position?}
  const turns = new Map();
  const tools = new Map();
  const perms = new Map();

  // ---- layout ------------------------------------------------------------------------------
  const titleEl = h('span', { id: 'session-title', 'data-testid': 'session-title' }, 'Session');
  const modeEl = h('span', { id: 'session-mode', class: 'badge', 'data-testid': 'session-mode' });
  const stateEl = h('span', { id: 'session-state', class: 'badge', 'data-testid': 'session-state' }, '…');
  const hostEl = h('span', { id: 'session-host', 'data-testid': 'session-host' });
  const liveEl = h('span', { id: 'session-live', class: 'muted small', 'data-testid': 'session-live', 'aria-live': 'polite' }, 'attaching…');
  const closeBtn = h('button', { id: 'session-close', type: 'button', class: 'small danger', 'data-testid': 'session-close', onclick: () => closeSession() }, 'Close session');
  const transcript = h('div', { id: 'transcript', class: 'transcript', 'data-testid': 'transcript', 'aria-live': 'polite', 'aria-relevant': 'additions' });
  const pageError = h('p', { id: 'session-error', class: 'error', role: 'alert', 'data-testid': 'session-error' });
  const clientsList = h('ul', { id: 'clients-list', class: 'clients', 'data-testid': 'clients-list' });
  const queuedList = h('ul', { id: 'queued-list', class: 'queued', 'data-testid': 'queued-list' });
  const queuedBox = h('div', { hidden: true }, h('h3', {}, 'Queued inputs'), queuedList);
  const infoList = h('dl', { class: 'kv small' });

  const textarea = h('textarea', {
    id: 'input-text',
    rows: 2,
    'data-testid': 'input-text',
    placeholder: 'Message the agent (Enter sends, Shift+Enter for a new line)',
    onkeydown: (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        form.requestSubmit();
      }
    },
  });
  const sendBtn = h('button', { id: 'input-send', type: 'submit', class: 'primary', 'data-testid': 'input-send' }, 'Send');
  const cancelBtn = h('button', { id: 'cancel-turn', type: 'button', class: 'danger', hidden: true, 'data-testid': 'cancel-turn', onclick: () => cancelTurn() }, 'Cancel turn');
  const inputStatus = h('p', { id: 'input-status', class: 'small', 'data-testid': 'input-status', 'aria-live': 'polite' });
  const queueText = h('span', { id: 'queue-offer-text' });
  const queueOffer = h('div', { id: 'queue-offer', class: 'queue-offer', hidden: true, 'data-testid': 'queue-offer', role: 'alert' },
    queueText,
    h('button', { id: 'queue-send', type: 'button', class: 'small primary', 'data-testid': 'queue-send', onclick: () => sendQueued() }, 'Queue it'),
    h('button', { id: 'queue-discard', type: 'button', class: 'small', 'data-testid': 'queue-discard', onclick: () => { queueOffer.hidden = true; } }, 'Keep editing'));
  const form = h('form', {
    id: 'input-form',
    class: 'composer-row',
    'data-testid': 'input-form',
    onsubmit: (ev) => {
      ev.preventDefault();
      const text = textarea.value;
      send(text, {
        onSent: () => {
          if (textarea.value === text) textarea.value = '';
        },
      });
    },
  },
  h('label', { for: 'input-text', class: 'sr-only' }, 'Message'),
  textarea, sendBtn, cancelBtn);

  // An inspect session takes no chat: its input names a plugin and a target (`disk /var`), so
  // it gets a plugin picker instead of a message box.
  const picker = pluginPicker('inspect');
  const inspectBtn = h('button', { id: 'inspect-run', type: 'submit', class: 'primary', 'data-testid': 'inspect-run' }, 'Run inspection');
  const inspectActions = h('div', { class: 'inspect-actions' }, inspectBtn);
  const inspectForm = h('form', {
    id: 'inspect-form',
    class: 'inspect-form',
    'data-testid': 'inspect-form',
    hidden: true,
    'aria-labelledby': 'inspect-form-heading',
    onsubmit: (ev) => {
      ev.preventDefault();
      send(inspectionText(picker.plugin.value, picker.target.value));
    },
  },
  h('h2', { id: 'inspect-form-heading', class: 'composer-heading' }, 'Run another inspection'),
  h('div', { class: 'inspect-row' },
    h('div', { class: 'field' }, h('label', { for: picker.plugin.id }, 'Plugin'), picker.plugin),
    h('div', { class: 'field grow' }, h('label', { for: picker.target.id }, 'Target'), picker.target, picker.hint),
    inspectActions));

  const metaEl = h('div', { class: 'meta' }, modeEl, ' ', stateEl, ' ', hostEl, ' ', h('span', { class: 'mono small muted', 'data-testid': 'session-id' }, sessionId), ' ', liveEl);
  const missingEl = h('p', { id: 'session-missing', hidden: true, 'data-testid': 'session-missing' },
    h('a', { href: '#/sessions' }, 'See the sessions the hub holds'));
  const grid = h('div', { class: 'session-grid', id: 'session-grid' },
      h('div', { class: 'session-main' },
        transcript,
        h('div', { class: 'composer', id: 'composer' }, queueOffer, form, inspectForm, inputStatus)),
      h('aside', { class: 'session-side', id: 'session-side', 'aria-label': 'Session details' },
        h('h3', {}, 'Attached clients'),
        clientsList,
        queuedBox,
        h('h3', {}, 'Session'),
        infoList));
  const el = h(
    'section',
    { class: 'page session-page', 'data-session-id': sessionId },
    h('div', { class: 'page-head' },
      h('div', { class: 'page-title' },
        h('h1', {}, titleEl),
        metaEl),
      closeBtn),
    pageError,
    missingEl,
    grid,
  );

  // ---- rendering helpers -------------------------------------------------------------------
  let stickToBottom = true;
  const nearBottom = () => window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 120;
  const onScroll = () => {
    stickToBottom = nearBottom();
  };
  window.addEventListener('scroll', onScroll, { passive: true });
  ctx.cleanups.push(() => window.removeEventListener('scroll', onScroll));
  let scrollTimer = null;
  function scrollDown() {
    if (!stickToBottom || scrollTimer) return;
    scrollTimer = setTimeout(() => {
      scrollTimer = null;
      window.scrollTo({ top: document.documentElement.scrollHeight });
    }, 30);
  }
  ctx.cleanups.push(() => clearTimeout(scrollTimer));

  function line(kind, text, attrs = {}) {
    const div = h('div', { class: `line ${kind}`, ...attrs }, text);
    transcript.append(div);
    scrollDown();
    return div;
  }

  function setState(s) {
    state = s;
    stateEl.textContent = stateText(s);
    stateEl.title = s ? `state: ${s}` : '';
    stateEl.className = `badge state-${s}`;
    stateEl.dataset.state = s ?? '';
    syncControls();
  }

  function setMode(m) {
    mode = m;
    const inspect = m === 'inspect';
    form.hidden = inspect;
    inspectForm.hidden = !inspect;
    // One Cancel button, in whichever form shows.
    (inspect ? inspectActions : form).append(cancelBtn);
  }

  /** The hub does not know this session: say so and offer nothing to do with it. */
  function setMissing(on) {
    missing = on;
    grid.hidden = on;
    metaEl.hidden = on;
    closeBtn.hidden = on;
    missingEl.hidden = !on;
    if (on) titleEl.textContent = 'Session not found';
  }

  function syncControls() {
    const observer = hub.identity?.class === 'observer';
    const canType = hub.ready && !closed && !observer && !missing;
    textarea.disabled = !canType;
    sendBtn.disabled = !canType || sending;
    picker.plugin.disabled = !canType;
    picker.target.disabled = !canType;
    inspectBtn.disabled = !canType || sending;
    cancelBtn.hidden = !(runningTurn && !closed);
    cancelBtn.disabled = observer || !hub.ready;
    closeBtn.disabled = closed || observer || !hub.ready;
    inspectBtn.title = closed ? 'The session is closed.' : observer ? 'Observers cannot send input.' : '';
    if (closed) textarea.placeholder = 'The session is closed.';
    else if (observer) textarea.placeholder = 'Observers cannot send input.';
    else textarea.placeholder = 'Message the agent (Enter sends, Shift+Enter for a new line)';
    for (const card of perms.values()) card.sync();
  }

  function renderClients() {
    const me = hub.identity;
    const list = [...clients.values()].sort((a, b) => String(a.name).localeCompare(String(b.name)));
    if (list.length === 0) {
      replaceChildren(clientsList, h('li', { class: 'muted' }, 'nobody'));
      return;
    }
    replaceChildren(clientsList, list.map((c) =>
      h('li', { 'data-testid': 'client', 'data-client-id': c.client_id, title: c.client_id },
        h('span', { class: 'strong' }, c.name ?? c.client_id), ' ',
        h('span', { class: `badge class-${c.class}` }, c.class),
        me && c.name === me.name && c.class === me.class ? h('span', { class: 'muted small' }, ' (you)') : null)));
  }

  function renderQueued() {
    queuedBox.hidden = queued.size === 0;
    replaceChildren(queuedList, [...queued.entries()].map(([id, q]) =>
      h('li', { 'data-input-id': id }, h('span', { class: 'muted' }, `${q.originator?.name ?? 'you'}: `), q.text)));
  }

  const eventsCount = h('dd', { 'data-testid': 'session-events' }, '0');
  function renderInfo(s) {
    const rows = [
      ['Mode', s.mode],
      ['Policy', s.policy ?? 'human'],
    ];
    if (s.first_seq && s.first_seq > 1) rows.push(['Oldest kept', String(s.first_seq)]);
    replaceChildren(infoList, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]), h('dt', {}, 'Events'), eventsCount);
    eventsCount.textContent = String(Math.max(lastSeq, s.last_seq ?? 0));
  }

  // ---- turns -------------------------------------------------------------------------------
  class Turn {
    constructor(turnId, ev) {
      this.id = turnId;
      this.seg = null;
      this.thinking = null; // the indicator shown while the turn waits for the model
      this.openTools = 0; // tool calls of this turn without a result yet
      this.ended = false;
      this.body = h('div', { class: 'turn-body' });
      const head = ev
        ? h('div', { class: 'turn-head' },
          h('span', { class: 'strong', 'data-testid': 'turn-originator' }, who(ev.originator)),
          h('span', { class: 'muted small' }, ` · ${fmtTime(ev.ts)}`),
          ev.input_id ? h('span', { class: 'badge small' }, 'queued') : null)
        : h('div', { class: 'turn-head muted' }, 'A turn that started before the retained history');
      const prompt = ev ? h('div', { class: 'turn-prompt', 'data-testid': 'turn-prompt' }, ev.text ?? '') : null;
      this.el = h('section', { class: 'turn', 'data-testid': 'turn', 'data-turn-id': turnId }, head, prompt, this.body);
      transcript.append(this.el);
    }

    /** Shows (or removes) the indicator at the end of the turn: nothing has come back yet. */
    waiting(on) {
      if (on && !this.thinking && !this.ended) {
        this.flush();
        this.seg = null;
        this.thinking = h('div', { class: 'thinking', role: 'status', 'data-testid': 'thinking' },
          h('span', { class: 'dots', 'aria-hidden': 'true' }, h('span'), h('span'), h('span')),
          mode === 'inspect' ? 'Inspecting…' : 'Thinking…');
        this.body.append(this.thinking);
        scrollDown();
      } else if (!on && this.thinking) {
        this.thinking.remove();
        this.thinking = null;
      }
    }

    text(kind, text) {
      this.waiting(false);
      if (!this.seg || this.seg.kind !== kind) {
        const el =
          kind === 'text'
            ? h('div', { class: 'md assistant-text', 'data-testid': 'assistant-text' })
            : h('div', { class: 'reasoning', 'data-testid': 'reasoning' });
        this.body.append(el);
        this.seg = { kind, el, buf: '', timer: null };
      }
      const seg = this.seg;
      seg.buf += text;
      if (kind === 'reasoning') {
        seg.el.textContent = seg.buf;
      } else if (!seg.timer) {
        seg.timer = setTimeout(() => {
          seg.timer = null;
          seg.el.replaceChildren(renderMarkdown(seg.buf));
          scrollDown();
        }, 40);
      }
      scrollDown();
    }

    flush() {
      const seg = this.seg;
      if (seg?.timer) {
        clearTimeout(seg.timer);
        seg.timer = null;
        seg.el.replaceChildren(renderMarkdown(seg.buf));
      }
    }

    add(node) {
      this.waiting(false);
      this.flush();
      this.seg = null;
      this.body.append(node);
      scrollDown();
    }
  }

  function turnFor(turnId) {
    let t = turns.get(turnId);
    if (!t) {
      t = new Turn(turnId, null);
      turns.set(turnId, t);
    }
    return t;
  }

  function argsText(args) {
    if (args && typeof args === 'object' && typeof args.command === 'string' && Object.keys(args).length <= 2) {
      return `$ ${args.command}${args.timeout_s ? `   (timeout ${args.timeout_s} s)` : ''}`;
    }
    return JSON.stringify(args ?? {}, null, 2);
  }

  function briefArgs(args) {
    const s = JSON.stringify(args ?? {});
    return s === '{}' ? '' : s.length > 80 ? `${s.slice(0, 77)}…` : s;
  }

  function toolFor(ev) {
    let t = tools.get(ev.call_id);
    if (!t) {
      const status = h('span', { class: 'badge running', 'data-testid': 'tool-status' }, 'running…');
      const duration = h('span', { class: 'muted small', 'data-testid': 'tool-duration' });
      const output = h('div', { class: 'tool-output-wrap' });
      // A permission prompt for this call goes here: under its arguments, above its result.
      const permSlot = h('div', { class: 'perm-slot' });
      const argsPre = h('pre', { 'data-testid': 'tool-args' }, argsText(ev.args));
      const details = h('details', { class: 'tool', 'data-testid': 'tool-call', 'data-call-id': ev.call_id, 'data-tool': ev.tool ?? '' },
        h('summary', {},
          h('span', { class: 'tool-name' }, ev.tool ?? 'tool'), ' ',
          h('code', { class: 'args-brief' }, briefArgs(ev.args)), ' ',
          status, ' ', duration),
        h('div', { class: 'tool-body' }, h('div', { class: 'label' }, 'Arguments'), argsPre, permSlot, output));
      const turn = turnFor(ev.turn_id);
      t = { details, status, duration, output, argsPre, permSlot, turn, tool: ev.tool };
      tools.set(ev.call_id, t);
      turn.openTools += 1;
      turn.add(details);
    }
    return t;
  }

  function setToolStatus(t, text, cls) {
    t.status.textContent = text;
    t.status.className = cls;
  }

  // ---- permission prompts ------------------------------------------------------------------
  function permissionCard(ev, nested) {
    const statusEl = h('p', { class: 'perm-status', 'data-testid': 'permission-status', 'aria-live': 'polite' }, 'Waiting for an answer…');
    const errorEl = h('p', { class: 'error', role: 'alert', 'data-testid': 'permission-error' });
    const card = {
      resolved: false,
      busy: false,
      el: null,
      sync() {
        const observer = hub.identity?.class === 'observer';
        for (const b of buttons) b.disabled = card.resolved || card.busy || closed || observer || !hub.ready;
        actions.hidden = card.resolved;
        if (observer && !card.resolved) errorEl.textContent = ANSWER_REFUSALS.forbidden;
      },
      resolve(r) {
        card.resolved = true;
        card.el.dataset.state = r.decision === 'allow' ? 'allowed' : 'denied';
        let text;
        if (r.cause === 'answered' || !r.cause) {
          text = `${r.decision === 'allow' ? 'Allowed' : 'Denied'} by ${who(r.by)}`;
          if (r.decision === 'allow' && r.scope === 'session') text += ' for the rest of the session';
        } else {
          text = `${r.decision === 'allow' ? 'Allowed' : 'Denied'}: ${CAUSE_TEXT[r.cause] ?? r.cause}`;
        }
        statusEl.textContent = text;
        errorEl.textContent = '';
        card.sync();
      },
    };
    const answer = async (decision, scope) => {
      card.busy = true;
      errorEl.textContent = '';
      card.sync();
      const params = { session_id: sessionId, call_id: ev.call_id, decision };
      if (scope) params.scope = scope;
      try {
        await hub.request('answer', params);
        if (!card.resolved) statusEl.textContent = 'Answer sent…';
      } catch (e) {
        const friendly = ANSWER_REFUSALS[e.reason];
        errorEl.textContent = friendly ? `${friendly} (${errorText(e)})` : `Refused: ${errorText(e)}`;
        if (e.reason === 'already_resolved' || e.reason === 'no_pending_permission') card.resolved = true;
      } finally {
        card.busy = false;
        card.sync();
      }
    };
    const buttons = [
      h('button', { type: 'button', class: 'primary', 'data-testid': 'permission-allow', onclick: () => answer('allow') }, 'Allow'),
      h('button', { type: 'button', 'data-testid': 'permission-allow-session', onclick: () => answer('allow', 'session') }, 'Allow for this session'),
      h('button', { type: 'button', class: 'danger', 'data-testid': 'permission-deny', onclick: () => answer('deny') }, 'Deny'),
    ];
    const actions = h('div', { class: 'actions' }, buttons);
    card.el = h('div', {
      class: 'permission',
      role: 'group',
      'aria-label': `Permission requested to run ${ev.tool}`,
      'data-testid': 'permission-card',
      'data-call-id': ev.call_id,
      'data-tool': ev.tool ?? '',
      'data-state': 'pending',
    },
    h('div', { class: 'perm-head' },
      h('strong', {}, 'Permission requested: '), h('code', {}, ev.tool ?? 'tool'),
      h('span', { class: 'muted small' }, ` · turn by ${who(ev.originator)} · policy ${ev.policy ?? 'human'}`)),
    // Nested in its tool call, the arguments are right above it.
    nested ? null : h('pre', { 'data-testid': 'permission-args' }, argsText(ev.args)),
    actions,
    statusEl,
    errorEl);
    card.sync();
    return card;
  }

  function addPermission(ev) {
    if (perms.has(ev.call_id)) return;
    const tool = tools.get(ev.call_id);
    const card = permissionCard(ev, Boolean(tool));
    perms.set(ev.call_id, card);
    if (tool) {
      tool.permSlot.append(card.el);
      tool.details.open = true;
      tool.turn.waiting(false);
      scrollDown();
    } else {
      // Its tool call is not in the history we hold: the card stands alone.
      turnFor(ev.turn_id).add(card.el);
    }
  }

  // ---- events ------------------------------------------------------------------------------
  function handle(ev) {
    if (ev.session_id !== sessionId) return;
    if (buffer) {
      buffer.push(ev);
      return;
    }
    if (typeof ev.seq !== 'number') return control(ev);
    if (ev.seq <= lastSeq) return;
    if (lastSeq > 0 && ev.seq > lastSeq + 1 && !gapNoted(ev.seq)) {
      line('gap', `Events ${lastSeq + 1}–${ev.seq - 1} are missing.`, { 'data-testid': 'stream-gap' });
    }
    lastSeq = ev.seq;
    eventsCount.textContent = String(lastSeq);
    const isLive = ev.seq > snapshotSeq;
    switch (ev.event) {
      case 'session_state':
        if (isLive) setState(ev.state);
        break;
      case 'client_attached':
        if (isLive && ev.client) {
          clients.set(ev.client.client_id, ev.client);
          renderClients();
        }
        break;
      case 'client_detached':
        if (isLive && ev.client) {
          clients.delete(ev.client.client_id);
          renderClients();
        }
        break;
      case 'turn_started': {
        const t = new Turn(ev.turn_id, ev);
        turns.set(ev.turn_id, t);
        t.waiting(true);
        if (ev.input_id && queued.delete(ev.input_id)) {
          renderQueued();
          if (inputStatus.dataset.inputId === ev.input_id) setInputStatus('');
        }
        if (isLive) {
          runningTurn = { turn_id: ev.turn_id, originator: ev.originator };
          syncControls();
        }
        scrollDown();
        break;
      }
      case 'text_delta':
        turnFor(ev.turn_id).text('text', ev.text ?? '');
        break;
      case 'reasoning_delta':
        turnFor(ev.turn_id).text('reasoning', ev.text ?? '');
        break;
      case 'tool_call':
        toolFor(ev);
        break;
      case 'permission_requested': {
        addPermission(ev);
        const t = tools.get(ev.call_id);
        if (t && !t.done) setToolStatus(t, 'awaiting approval', 'badge pending');
        break;
      }
      case 'permission_resolved': {
        const card = perms.get(ev.call_id);
        if (card) card.resolve(ev);
        const t = tools.get(ev.call_id);
        if (t) {
          t.permission = ev.decision;
          if (!t.done) setToolStatus(t, ev.decision === 'allow' ? 'running…' : 'denied', ev.decision === 'allow' ? 'badge running' : 'badge err');
        }
        break;
      }
      case 'tool_result': {
        const t = toolFor(ev);
        if (!t.done) t.turn.openTools -= 1;
        t.done = true;
        setToolStatus(t, ev.ok ? 'ok' : 'error', `badge ${ev.ok ? 'ok' : 'err'}`);
        t.details.dataset.ok = ev.ok ? 'true' : 'false';
        t.duration.textContent = fmtDuration(ev.duration_ms);
        replaceChildren(t.output,
          h('div', { class: 'label' }, ev.ok ? 'Result' : 'Error'),
          h('pre', { 'data-testid': 'tool-output', class: ev.ok ? '' : 'err' }, ev.output ?? ''),
          ev.truncated ? h('p', { class: 'muted small' }, 'Output truncated at 32 KiB.') : null);
        // A call somebody had to approve is worth showing.
        if (perms.has(ev.call_id) || t.permission) t.details.open = true;
        // Every call has answered: the model (or the inspection) goes on.
        if (t.turn.openTools <= 0) t.turn.waiting(true);
        break;
      }
      case 'turn_ended': {
        const t = turnFor(ev.turn_id);
        const usage = ev.usage?.total_tokens ? ` · ${ev.usage.total_tokens} tokens` : '';
        const text = `${STOP_TEXT[ev.stop] ?? `Turn ended (${ev.stop})`}${ev.error ? `: ${ev.error}` : ''}${usage}`;
        t.add(h('div', { class: `turn-end stop-${ev.stop}`, 'data-testid': 'turn-ended', 'data-stop': ev.stop ?? '' }, text));
        t.el.dataset.ended = ev.stop ?? 'ended';
        t.ended = true;
        if (inputStatus.dataset.turnId === ev.turn_id) setInputStatus('');
        if (isLive && runningTurn?.turn_id === ev.turn_id) {
          runningTurn = null;
          syncControls();
        }
        break;
      }
      case 'notice':
        line(`notice level-${ev.level ?? 'info'}`, ev.message ?? '', { 'data-testid': 'notice', 'data-level': ev.level ?? 'info' });
        break;
      case 'session_closed':
        line('closed', `Session closed${ev.reason ? `: ${ev.reason}` : ''}.`, { 'data-testid': 'session-closed' });
        closed = true;
        for (const t of turns.values()) t.waiting(false);
        liveEl.textContent = 'closed';
        syncControls();
        break;
      default:
        break; // unknown events are ignored (forward compatibility)
    }
  }

  let gapUpTo = 0;
  function gapNoted(seq) {
    return seq - 1 <= gapUpTo;
  }

  function control(ev) {
    switch (ev.event) {
      case 'stream_gap':
        gapUpTo = Math.max(gapUpTo, ev.to_seq ?? 0);
        line('gap', `The hub no longer holds events ${ev.from_seq}–${ev.to_seq}; the history above is incomplete.`, { 'data-testid': 'stream-gap' });
        break;
      case 'replay_complete': {
        if (typeof ev.last_seq === 'number' && ev.last_seq > lastSeq) lastSeq = ev.last_seq;
        for (const p of pendingFromSnapshot) addPermission(p);
        pendingFromSnapshot = [];
        for (const t of turns.values()) {
          t.flush();
          // Only the running turn can still be waiting (one cut short by a restart is not).
          if (closed || t.id !== runningTurn?.turn_id) t.waiting(false);
        }
        liveEl.textContent = closed ? 'history (closed)' : 'live';
        liveEl.dataset.live = 'true';
        scrollDown();
        break;
      }
      default:
        break;
    }
  }

  function applySnapshot(s) {
    snapshotSeq = s.last_seq ?? 0;
    setMode(s.mode ?? null);
    modeEl.textContent = s.mode ?? '';
    titleEl.textContent = s.title || `${capitalize(s.mode ?? '')} session`.trim();
    setState(s.state);
    closed = s.state === 'closed';
    clients.clear();
    for (const c of s.clients ?? []) clients.set(c.client_id, c);
    renderClients();
    queued.clear();
    for (const q of s.queued ?? []) queued.set(q.input_id, q);
    renderQueued();
    runningTurn = s.turn ?? null;
    pendingFromSnapshot = s.pending_permissions ?? [];
    renderInfo(s);
    syncControls();
  }

  function reset() {
    lastSeq = 0;
    snapshotSeq = 0;
    turns.clear();
    tools.clear();
    perms.clear();
    transcript.replaceChildren();
  }

  async function attach() {
    if (attaching) return;
    attaching = true;
    liveEl.textContent = lastSeq > 0 ? 're-attaching…' : 'loading history…';
    liveEl.dataset.live = 'false';
    buffer = [];
    const after = lastSeq;
    try {
      const { snapshot } = await hub.request('attach', { session_id: sessionId, after_seq: after });
      pageError.textContent = '';
      setMissing(false);
      applySnapshot(snapshot ?? {});
      if (after > 0 && (snapshot?.last_seq ?? 0) < after) {
        // The hub's history is shorter than what we rendered (a different hub?): start over.
        buffer = null;
        attaching = false;
        reset();
        return attach();
      }
      const frames = buffer;
      buffer = null;
      for (const f of frames) handle(f);
      lookupHost();
    } catch (e) {
      buffer = null;
      if (e.reason === 'bad_request' && after > 0) {
        attaching = false;
        reset();
        return attach();
      }
      liveEl.textContent = 'not attached';
      if (e.reason === 'unknown_session') {
        setMissing(true);
        pageError.textContent = `No such session: ${sessionId} (the hub answered ${errorText(e)}).`;
      } else {
        pageError.textContent = e.reason === 'disconnected' ? '' : `Cannot attach: ${errorText(e)}`;
      }
      syncControls();
    } finally {
      attaching = false;
    }
  }

  async function lookupHost() {
    try {
      const { sessions } = await hub.request('session.list');
      const s = (sessions ?? []).find((x) => x.session_id === sessionId);
      if (s) {
        replaceChildren(hostEl, s.agent_id ? ['on ', hostLink(s.agent_id, s.hostname)] : '');
        if (s.title) titleEl.textContent = s.title;
      }
    } catch {
      // cosmetic only
    }
  }

  function setInputStatus(text, { error = false, inputId = '', turnId = '' } = {}) {
    inputStatus.textContent = text;
    inputStatus.className = error ? 'small error' : 'small';
    inputStatus.dataset.inputId = inputId ?? '';
    inputStatus.dataset.turnId = turnId ?? '';
  }

  // ---- actions -----------------------------------------------------------------------------
  let pending = null; // {text, onSent}: refused with turn_in_progress, offered for the queue

  /** Sends `text` as the session's next input; `onSent` runs once the hub took it. */
  async function send(text, { queue = false, onSent = null } = {}) {
    if (!text || !text.trim()) return;
    setInputStatus('');
    queueOffer.hidden = true;
    sending = true;
    syncControls();
    try {
      const params = { session_id: sessionId, text };
      if (queue) params.queue = true;
      const r = await hub.request('input', params);
      onSent?.();
      pending = null;
      if (r.input_id) {
        queued.set(r.input_id, { text, originator: hub.identity, position: r.position });
        renderQueued();
        setInputStatus(`Queued (position ${r.position}); it runs after the current turn.`, { inputId: r.input_id });
      }
    } catch (e) {
      if (e.reason === 'turn_in_progress' && !queue) {
        pending = { text, onSent };
        const by = e.details?.originator ? who(e.details.originator) : 'someone';
        queueText.textContent = `A turn started by ${by} is still running. `;
        queueOffer.hidden = false;
      } else {
        setInputStatus(`Not sent: ${errorText(e)}`, { error: true });
      }
    } finally {
      sending = false;
      syncControls();
    }
  }

  function sendQueued() {
    if (pending) send(pending.text, { queue: true, onSent: pending.onSent });
    else queueOffer.hidden = true;
  }

  async function cancelTurn() {
    if (!runningTurn) return;
    const turnId = runningTurn.turn_id;
    cancelBtn.disabled = true;
    try {
      await hub.request('cancel', { session_id: sessionId, turn_id: turnId });
      if (runningTurn?.turn_id === turnId) setInputStatus('Cancelling…', { turnId });
    } catch (e) {
      setInputStatus(`Cannot cancel: ${errorText(e)}`, { error: true });
    } finally {
      syncControls();
    }
  }

  let closeArmed = null;
  async function closeSession() {
    if (!closeArmed) {
      closeBtn.textContent = 'Click again to close';
      closeArmed = setTimeout(() => {
        closeArmed = null;
        closeBtn.textContent = 'Close session';
      }, 4000);
      return;
    }
    clearTimeout(closeArmed);
    closeArmed = null;
    closeBtn.textContent = 'Closing…';
    closeBtn.disabled = true;
    try {
      await hub.request('session.close', { session_id: sessionId });
      closeBtn.textContent = 'Closed';
    } catch (e) {
      closeBtn.textContent = 'Close session';
      setInputStatus(`Cannot close: ${errorText(e)}`, { error: true });
      syncControls();
    }
  }
  ctx.cleanups.push(() => clearTimeout(closeArmed));

  // ---- wiring ------------------------------------------------------------------------------
  ctx.onFrame(handle);
  ctx.onReady(() => {
    syncControls();
    attach();
  });
  ctx.cleanups.push(hub.on('status', ({ status }) => {
    if (status !== 'ready') {
      buffer = null;
      liveEl.textContent = 'disconnected — will re-attach';
      liveEl.dataset.live = 'false';
    }
    syncControls();
  }));
  renderClients();
  syncControls();

  return {
    el,
    focus: textarea,
    destroy() {
      for (const t of turns.values()) t.flush();
      if (hub.ready) hub.request('detach', { session_id: sessionId }).catch(() => {});
    },
  };
}

function capitalize(s) {
  return s ? s[0].toUpperCase() + s.slice(1) : s;
}
