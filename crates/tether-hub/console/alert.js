// The alert page (#/alert/<id>): the alert (alert.events), its description, labels and
// annotations, its diagnoses (sessions and reports), its acknowledgements, its timeline; Ack
// (with a comment), Silence (a form prefilled with its labels) and, while it fires, Diagnose.
// `alert` frames of this alert (alerts.subscribe) update it live; observers see the buttons
// disabled, with the reason.

import { h, replaceChildren, timeEl, fmtDateTime, hostLink, errorText, extLink, actRefusal, labelPairs } from './dom.js';
import { statusBadges, description, descriptionText, diagnoseButton, titleText } from './alertview.js';
import { openSilenceForm } from './silences.js';
import { renderMarkdown, markdownLineText } from './markdown.js';

const EVENTS_PAGE = 100;

// Annotations shown elsewhere on the page (the description, its format).
const SHOWN_ELSEWHERE = new Set(['description', 'description_format']);
// Annotations whose value is a URL worth a link.
const URL_ANNOTATIONS = /(^|_)(url|link)$|URL$/;

export function alertPage(ctx, alertIdText) {
  const { hub } = ctx;
  const alertId = Number(alertIdText);
  let alert = null;
  let events = [];
  let nextBefore = null;
  let acks = [];
  let reports = new Map(); // report_id → report
  let missing = false;

  const titleEl = h('span', { id: 'alert-title', 'data-testid': 'alert-page-title' }, `Alert ${alertIdText}`);
  const badgesEl = h('span', { class: 'meta', id: 'alert-badges', 'data-testid': 'alert-page-status' });
  const metaEl = h('div', { class: 'meta small', id: 'alert-meta' });
  const pageError = h('p', { id: 'alert-error', class: 'error', role: 'alert', 'data-testid': 'alert-error' });
  const refusalEl = h('p', { id: 'alert-refusal', class: 'notice-box', 'data-testid': 'alert-refusal', hidden: true });
  const descEl = h('div', { id: 'alert-description', class: 'alert-description', 'data-testid': 'alert-page-description' });
  const ackEl = h('div', { id: 'alert-ack', 'data-testid': 'alert-ack' });
  const silenceEl = h('div', { id: 'alert-silence', 'data-testid': 'alert-silence-state' });
  const diagEl = h('div', { id: 'alert-diagnoses', 'data-testid': 'alert-diagnoses' });
  const timelineBody = h('tbody', { id: 'alert-timeline' });
  const olderBtn = h('button', { id: 'alert-events-more', type: 'button', hidden: true, onclick: () => loadEvents(true) }, 'Older events');
  const detailsEl = h('dl', { class: 'kv small', id: 'alert-details', 'data-testid': 'alert-details' });
  const labelsEl = h('div', { id: 'alert-labels', 'data-testid': 'alert-page-labels' });
  const annotationsEl = h('div', { id: 'alert-annotations', 'data-testid': 'alert-annotations' });
  const liveEl = h('span', { class: 'muted small', id: 'alert-live', 'data-testid': 'alert-live', 'aria-live': 'polite' }, 'loading…');

  // ---- actions -------------------------------------------------------------------------------
  const ackBtn = h('button', { id: 'alert-ack-open', type: 'button', 'data-testid': 'alert-ack-button', onclick: () => toggleAckForm(true) }, 'Ack');
  const silenceBtn = h('button', {
    id: 'alert-silence-open',
    type: 'button',
    'data-testid': 'alert-silence-button',
    onclick: () => alert && openSilenceForm(ctx, { alert }),
  }, 'Silence');
  const diagnoseSlot = h('span', { class: 'diagnose-slot' });
  const actionsEl = h('div', { class: 'actions page-actions' }, diagnoseSlot, ackBtn, silenceBtn);

  const ackComment = h('textarea', { id: 'ack-comment', rows: 2, maxlength: 4096, 'data-testid': 'ack-comment', placeholder: 'Optional: what you are doing about it' });
  const ackSubmit = h('button', { id: 'ack-submit', type: 'submit', class: 'primary', 'data-testid': 'ack-submit' }, 'Acknowledge');
  const ackError = h('p', { class: 'error', role: 'alert', 'data-testid': 'ack-error' });
  const ackForm = h('form', {
    id: 'ack-form',
    class: 'card inline-form',
    hidden: true,
    'data-testid': 'ack-form',
    onsubmit: async (ev) => {
      ev.preventDefault();
      ackError.textContent = '';
      ackSubmit.disabled = true;
      try {
        const params = { alert_id: alertId };
        if (ackComment.value.trim()) params.comment = ackComment.value.trim();
        const r = await hub.request('alert.ack', params);
        ackComment.value = '';
        toggleAckForm(false);
        if (r.alert) setAlert(r.alert);
        loadEvents(false);
      } catch (e) {
        ackError.textContent = `The hub refused: ${errorText(e)}`;
      } finally {
        ackSubmit.disabled = false;
        syncActions();
      }
    },
  },
  h('label', { for: 'ack-comment' }, 'Acknowledge this alert'),
  ackComment,
  ackError,
  h('div', { class: 'actions' },
    h('button', { type: 'button', 'data-testid': 'ack-cancel', onclick: () => toggleAckForm(false) }, 'Cancel'),
    ackSubmit));

  function toggleAckForm(open) {
    ackForm.hidden = !open;
    if (open) ackComment.focus();
  }

  function syncActions() {
    const why = actRefusal(hub);
    for (const b of [ackBtn, silenceBtn]) {
      b.disabled = Boolean(why) || !alert;
      b.title = why;
    }
    ackSubmit.disabled = Boolean(why);
    refusalEl.textContent = hub.identity?.class === 'observer' ? why : '';
    refusalEl.hidden = !(hub.identity?.class === 'observer');
    if (why) ackForm.hidden = true;
    replaceChildren(diagnoseSlot, alert ? diagnoseButton(ctx, alert, { class: '', id: 'alert-diagnose' }) : null);
  }

  // ---- rendering -------------------------------------------------------------------------------
  function kv(rows) {
    return rows.filter(([, v]) => v !== null && v !== undefined && v !== '').map(([k, v, testid]) =>
      [h('dt', {}, k), h('dd', testid ? { 'data-testid': testid } : {}, v)]);
  }

  function renderAlert() {
    const a = alert;
    titleEl.textContent = titleText(a);
    replaceChildren(badgesEl, statusBadges(a));
    replaceChildren(metaEl,
      h('span', {}, 'Host: ', hostLink(a.agent_id, a.hostname, { why: a.route?.reason })),
      h('span', { class: 'muted' }, ` · ${a.source}${a.source_name ? ` (${a.source_name})` : ''}`),
      h('span', { class: 'muted mono' }, ` · ${a.alert_key}`),
      ' ', liveEl);
    const text = descriptionText(a);
    replaceChildren(descEl, text ? description(a, text) : h('p', { class: 'muted' }, 'No description.'));

    replaceChildren(detailsEl, kv([
      ['State', a.state, 'alert-detail-state'],
      ['Severity', a.severity],
      ['Source', `${a.source}${a.source_name ? ` (${a.source_name})` : ''}`],
      ['First seen', timeEl(a.first_at)],
      [a.state === 'firing' ? 'Firing since' : 'Episode began', timeEl(a.started_at)],
      ['Last event', timeEl(a.last_at)],
      ['Resolved', a.resolved_at ? timeEl(a.resolved_at) : null],
      ['Events', String(a.event_count ?? 0)],
      ['Routing', a.route?.reason ?? null, 'alert-route'],
      ['Source link', a.url ? extLink(a.url, 'open in the source', { 'data-testid': 'alert-url' }) : null],
    ]));

    const pairs = labelPairs(a.labels);
    replaceChildren(labelsEl, pairs.length
      ? h('table', { class: 'kv-table' }, h('tbody', {}, Object.keys(a.labels).sort().map((k) =>
        h('tr', { 'data-testid': 'alert-label', 'data-name': k }, h('th', { scope: 'row' }, k), h('td', {}, String(a.labels[k]))))))
      : h('p', { class: 'muted' }, 'No labels.'));

    const ann = Object.keys(a.annotations ?? {}).filter((k) => !SHOWN_ELSEWHERE.has(k)).sort();
    replaceChildren(annotationsEl, ann.length
      ? h('table', { class: 'kv-table' }, h('tbody', {}, ann.map((k) => {
        const v = String(a.annotations[k]);
        return h('tr', { 'data-testid': 'alert-annotation', 'data-name': k },
          h('th', { scope: 'row' }, k),
          h('td', {}, URL_ANNOTATIONS.test(k) ? extLink(v) : h('span', { class: 'pre-wrap' }, v)));
      })))
      : h('p', { class: 'muted' }, 'No other annotations.'));

    renderAck();
    renderSilence();
    renderDiagnoses();
    syncActions();
  }

  function renderAck() {
    const a = alert;
    const current = a.ack
      ? h('p', { 'data-testid': 'alert-ack-current' },
        h('span', { class: 'badge acked' }, 'acknowledged'), ' by ',
        h('span', { class: 'strong', 'data-testid': 'alert-ack-by' }, a.ack.by), ' at ', timeEl(a.ack.at),
        a.ack.comment ? h('span', {}, ': ', h('q', { 'data-testid': 'alert-ack-comment' }, a.ack.comment)) : null)
      : h('p', { class: 'muted', 'data-testid': 'alert-ack-current' }, a.state === 'firing' ? 'Not acknowledged.' : 'Not acknowledged (this episode).');
    const history = acks.length > (a.ack ? 1 : 0)
      ? h('details', { class: 'small' }, h('summary', {}, `All acknowledgements (${acks.length})`),
        h('ul', { class: 'plain-list' }, acks.map((k) => h('li', { 'data-testid': 'alert-ack-history' },
          timeEl(k.at), ' ', h('span', { class: 'strong' }, k.by), k.comment ? `: ${k.comment}` : ''))))
      : null;
    replaceChildren(ackEl, current, history);
  }

  function renderSilence() {
    const a = alert;
    if (!a.silenced) {
      replaceChildren(silenceEl, h('p', { class: 'muted', 'data-testid': 'alert-silence-text' }, 'No silence covers it.'));
      return;
    }
    replaceChildren(silenceEl, h('p', { 'data-testid': 'alert-silence-text' },
      h('span', { class: 'badge silenced' }, 'silenced'), ' by ',
      (a.silenced_by ?? []).map((id, i) => [i ? ', ' : '', h('a', { href: '#/silences', 'data-testid': 'alert-silence-link', 'data-silence-id': String(id) }, `silence ${id}`)]),
      ' — it notifies nobody and is not diagnosed automatically.'));
  }

  function renderDiagnoses() {
    const a = alert;
    const items = (a.diagnoses ?? []).map((d) => {
      const report = d.report_id != null ? reports.get(d.report_id) : null;
      return h('li', { class: 'diagnosis', 'data-testid': 'alert-diagnosis' },
        timeEl(d.created_at), ' ',
        d.session_id
          ? h('a', { href: `#/session/${encodeURIComponent(d.session_id)}`, class: 'mono', 'data-testid': 'alert-diagnosis-session' }, `session ${d.session_id}`)
          : null,
        d.report_id != null ? h('span', { class: 'muted' }, `${d.session_id ? ' · ' : ''}report ${d.report_id}`) : null,
        report
          ? h('details', { class: 'report', 'data-testid': 'alert-diagnosis-report' },
            h('summary', {}, 'Report'),
            h('div', { class: 'md' }, renderMarkdown(report.report ?? '')))
          : null);
    });
    replaceChildren(diagEl,
      items.length ? h('ul', { class: 'plain-list' }, items) : h('p', { class: 'muted' }, 'No diagnosis yet.'),
      a.diagnosis_skipped
        ? h('p', { class: 'small', 'data-testid': 'alert-diagnosis-skipped' },
          'Not diagnosed automatically (', timeEl(a.diagnosis_skipped.at), '): ', a.diagnosis_skipped.reason)
        : null);
  }

  function renderTimeline() {
    if (events.length === 0) {
      replaceChildren(timelineBody, h('tr', {}, h('td', { colspan: 5, class: 'empty' }, 'No events.')));
    } else {
      replaceChildren(timelineBody, events.map((e) => h('tr', { 'data-testid': 'alert-event', 'data-event-id': String(e.event_id), 'data-state': e.state ?? '' },
        h('td', {}, timeEl(e.at)),
        h('td', {}, h('span', { class: `badge status-${e.state === 'resolved' ? 'resolved' : String(e.severity ?? '')}` }, e.status ?? e.state)),
        h('td', {}, e.severity ?? h('span', { class: 'muted' }, '—')),
        h('td', { class: 'muted small', title: 'when the hub received it' }, fmtDateTime(e.received_at)),
        h('td', { class: 'small' }, eventNote(e)))));
    }
    olderBtn.hidden = nextBefore == null;
  }

  /** What an event says besides its status: its summary, or its description's first line (as text). */
  function eventNote(e) {
    const ann = e.annotations ?? {};
    const text = markdownLineText(String(ann.summary ?? ann.description ?? '').split('\n')[0]);
    return text.length > 160 ? `${text.slice(0, 160)}…` : text;
  }

  function setAlert(a) {
    alert = a;
    missing = false;
    renderAlert();
  }

  // ---- loading ---------------------------------------------------------------------------------
  async function loadEvents(older) {
    try {
      const params = { alert_id: alertId, limit: EVENTS_PAGE };
      if (older && nextBefore != null) params.before_event_id = nextBefore;
      const r = await hub.request('alert.events', params);
      pageError.textContent = '';
      events = older ? [...events, ...(r.events ?? [])] : (r.events ?? []);
      nextBefore = r.next_before_event_id ?? null;
      acks = r.acks ?? [];
      if (r.alert && !older) setAlert(r.alert);
      else renderAck();
      renderTimeline();
      liveEl.textContent = 'live';
      liveEl.dataset.live = 'true';
    } catch (e) {
      if (e.reason === 'bad_request' && /no alert/.test(e.message)) {
        missing = true;
        titleEl.textContent = 'Alert not found';
        grid.hidden = true;
        actionsEl.hidden = true;
        pageError.textContent = `No such alert: ${alertIdText} (the hub answered ${errorText(e)}).`;
      } else if (e.reason !== 'disconnected') {
        pageError.textContent = `Cannot load the alert: ${errorText(e)}`;
      }
    }
  }

  async function loadReports() {
    if (!alert || !(alert.diagnoses ?? []).some((d) => d.report_id != null)) return;
    try {
      const r = await hub.request('reports.list', { alert_id: alertId, limit: 50 });
      reports = new Map((r.reports ?? []).map((x) => [x.report_id, x]));
      renderDiagnoses();
    } catch {
      // The links are there without the report text.
    }
  }

  const section = (title, body, id) => h('section', { class: 'card section', id }, h('h2', {}, title), body);
  const grid = h('div', { class: 'alert-grid' },
    h('div', { class: 'alert-main' },
      section('Description', descEl, 'alert-description-section'),
      section('Acknowledgement', [ackEl, ackForm], 'alert-ack-section'),
      section('Silence', silenceEl, 'alert-silence-section'),
      section('Diagnoses', diagEl, 'alert-diagnoses-section'),
      section('Timeline', [
        h('div', { class: 'table-wrap' },
          h('table', { class: 'grid', id: 'alert-timeline-table', 'data-testid': 'alert-timeline' },
            h('thead', {}, h('tr', {}, ['At the source', 'Status', 'Severity', 'Received', 'Note'].map((t) => h('th', { scope: 'col' }, t)))),
            timelineBody)),
        olderBtn], 'alert-timeline-section')),
    h('aside', { class: 'alert-side', 'aria-label': 'Alert details' },
      section('Details', detailsEl, 'alert-details-section'),
      section('Labels', labelsEl, 'alert-labels-section'),
      section('Annotations', annotationsEl, 'alert-annotations-section')));

  const el = h('section', { class: 'page alert-page', 'data-alert-id': alertIdText },
    h('p', { class: 'crumbs small' }, h('a', { href: '#/alerts' }, '← Alerts')),
    h('div', { class: 'page-head' },
      h('div', { class: 'page-title' }, h('h1', {}, titleEl), badgesEl, metaEl),
      actionsEl),
    pageError,
    refusalEl,
    grid);

  if (!Number.isSafeInteger(alertId) || alertId <= 0) {
    titleEl.textContent = 'Alert not found';
    grid.hidden = true;
    actionsEl.hidden = true;
    pageError.textContent = `\`${alertIdText}\` is not an alert id.`;
    return { el };
  }

  ctx.onFrame((frame) => {
    if (frame.event !== 'alert' || frame.alert?.alert_id !== alertId || missing) return;
    setAlert(frame.alert);
    // A new event, an acknowledgement: the timeline and the ack history changed too.
    if (['created', 'fired', 'resolved', 'updated', 'acked'].includes(frame.change)) loadEvents(false);
    if (frame.change === 'diagnosed') loadReports();
  });
  ctx.onReady(async () => {
    syncActions();
    try {
      await hub.subscribeOnce('alerts.subscribe');
    } catch (e) {
      liveEl.textContent = `not live: ${errorText(e)}`;
    }
    await loadEvents(false);
    loadReports();
  });
  ctx.cleanups.push(hub.on('status', () => {
    if (!hub.ready) {
      liveEl.textContent = 'disconnected';
      liveEl.dataset.live = 'false';
    }
    syncActions();
  }));

  syncActions();
  return { el };
}
