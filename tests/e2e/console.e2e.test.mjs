// End to end: the hub console in Chromium against a real `tether up` (a hub and a local agent
// on loopback). Run by scripts/e2e.sh, which starts `tether up` and passes:
//   TETHER_CONSOLE_URL      the console's URL (`console: …` in tether up's output)
//   TETHER_OPERATOR_TOKEN   the operator token (`operator token: …`)
//   TETHER_BIN              the tether binary (for `tether alert send`)
//   TETHER_ALERT_SOURCE_TOKEN   the token of the `[[alert_sources]]` entry e2e.sh adds to
//                           hub.toml (the test posts Alertmanager notifications with it)
//   TETHER_OBSERVER_TOKEN   an observer operator's token (also added by e2e.sh)
//   XDG_DATA_HOME / XDG_CONFIG_HOME   the throwaway home tether up runs in
// Screenshots of every page go to tests/e2e/output/e2e-*.png (e2e-phone-*.png at 390 px wide).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import os from 'node:os';
import { launch, watchPage, waitText, until, screenshot, checkPhoneLayout } from './lib.mjs';

const URL_ = process.env.TETHER_CONSOLE_URL;
const TOKEN = process.env.TETHER_OPERATOR_TOKEN;
const BIN = process.env.TETHER_BIN || 'tether';
const SOURCE_TOKEN = process.env.TETHER_ALERT_SOURCE_TOKEN;
const OBSERVER_TOKEN = process.env.TETHER_OBSERVER_TOKEN;
const SEVERITY_RANK = { Critical: 0, Warning: 1, Info: 2, Resolved: 3 };

/** POSTs an Alertmanager webhook notification (payload version 4) to the hub's intake. */
async function postAlertmanager(base, alerts) {
  const body = {
    version: '4',
    status: alerts.some((a) => a.status === 'firing') ? 'firing' : 'resolved',
    receiver: 'tether',
    groupKey: '{}:{job="e2e"}',
    groupLabels: { job: 'e2e' },
    commonLabels: {},
    commonAnnotations: {},
    externalURL: 'http://alertmanager.e2e.invalid:9093',
    truncatedAlerts: 0,
    alerts,
  };
  const r = await fetch(new URL('api/v1/alerts/alertmanager', base), {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${SOURCE_TOKEN}` },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  assert.equal(r.status, 200, `the intake answered ${r.status}: ${text}`);
  return JSON.parse(text);
}

/**
 * The alerts page's groups as shown: [{group, rows: [{id, key, status, state}]}], in order.
 */
async function shownGroups(page) {
  return page.locator('[data-testid="alert-group"]').evaluateAll((gs) => gs.map((g) => ({
    group: g.dataset.group,
    name: g.querySelector('[data-testid="alert-group-name"]')?.textContent ?? '',
    rows: [...g.querySelectorAll('[data-testid="alert-row"]')].map((r) => ({
      id: r.dataset.alertId,
      key: r.dataset.alertKey,
      status: r.dataset.status,
      state: r.dataset.state,
      title: r.querySelector('[data-testid="alert-title"]')?.textContent ?? '',
    })),
  })));
}

/** Firing first, then by severity: within every group, and group by group (its first row). */
function assertFiringFirst(groups) {
  const rank = (r) => SEVERITY_RANK[r.status] ?? 9;
  for (const g of groups) {
    for (let i = 1; i < g.rows.length; i++) {
      assert.ok(rank(g.rows[i - 1]) <= rank(g.rows[i]), `group ${g.name}: ${g.rows[i - 1].title} (${g.rows[i - 1].status}) before ${g.rows[i].title} (${g.rows[i].status})`);
    }
  }
  for (let i = 1; i < groups.length; i++) {
    assert.ok(rank(groups[i - 1].rows[0]) <= rank(groups[i].rows[0]), `group ${groups[i - 1].name} before ${groups[i].name}`);
  }
}

function tether(args, timeout = 30_000) {
  return new Promise((resolve, reject) => {
    execFile(BIN, args, { env: process.env, timeout, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`tether ${args.join(' ')} failed: ${err.message}\nstdout: ${stdout}\nstderr: ${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}

test('the hub console end to end', { timeout: 300_000, skip: !URL_ || !TOKEN ? 'TETHER_CONSOLE_URL and TETHER_OPERATOR_TOKEN are not set (run scripts/e2e.sh)' : false }, async (t) => {
  const { context, close } = await launch();
  const page = await context.newPage();
  // The wrong-token step makes Chromium log a failed WebSocket and the 401 of the console's
  // follow-up check; the test checks the UI for those instead.
  const watch = watchPage(page, { ignore: [/WebSocket connection to .* failed/, /status of 401/] });
  const base = URL_.replace(/\/?$/, '/');
  let agentId;
  let inspectSession; // the inspect session's URL
  let chatSession; // the chat session's URL
  let diagnoseSession; // the diagnose session's URL
  let loadAlertId; // the Alertmanager alert routed to this host (E2EHighLoad, firing)
  let silenceId;

  try {
    await t.test('a wrong token is refused with a clear message', async () => {
      await page.goto(`${base}#/signin`);
      await page.fill('#token', `not-${TOKEN}`);
      await page.click('#signin-submit');
      await waitText(page.locator('#signin-error'), /the hub refused the token/i, { timeout: 20_000 });
      assert.equal(await page.evaluate(() => localStorage.getItem('tether.operator_token')), null);
      await screenshot(page, 'e2e-signin-refused');
    });

    await t.test('sign in with the operator token', async () => {
      await page.goto(`${base}#/agents`);
      await page.waitForURL(/#\/signin$/);
      await page.locator('#token').waitFor({ state: 'visible' });
      await screenshot(page, 'e2e-signin');
      await page.fill('#token', TOKEN);
      await page.click('#signin-submit');
      await page.waitForURL(/#\/agents$/, { timeout: 20_000 });
      await waitText(page.locator('#conn-status'), /connected/, { timeout: 20_000 });
      const name = await waitText(page.locator('[data-testid="whoami-name"]'), /\S/);
      const cls = await waitText(page.locator('[data-testid="whoami-class"]'), /^(human|agent|observer)$/);
      t.diagnostic(`signed in as ${name} (${cls})`);
      assert.equal(cls, 'human', 'the operator token of tether up is a human one (it must answer prompts)');
    });

    await t.test('the local agent is on the fleet page, connected', async () => {
      await until('the agents table to load', async () => (await page.getAttribute('#agents-table', 'data-state')) === 'live', { timeout: 20_000 });
      const connectedRow = page.locator('[data-testid="agent-row"][data-connected="true"]');
      await until('a connected agent', async () => (await connectedRow.count()) > 0, { timeout: 45_000 });
      // Prefer the row of this host (tether up's agent runs here).
      const rows = await connectedRow.evaluateAll((rs) => rs.map((r) => ({
        id: r.dataset.agentId,
        host: r.querySelector('[data-testid="agent-hostname"]')?.textContent ?? '',
      })));
      const mine = rows.find((r) => r.host.includes(os.hostname())) ?? rows[0];
      agentId = mine.id;
      t.diagnostic(`agent ${agentId} on ${mine.host}`);
      const row = page.locator(`[data-testid="agent-row"][data-agent-id="${agentId}"]`);
      await waitText(row.locator('[data-testid="agent-state"]'), /^connected/);
      assert.match(await row.locator('[data-testid="agent-proto"]').textContent(), /^\d+$/);
      await screenshot(page, 'e2e-fleet');
    });

    await t.test('an alert sent on the host appears live on the alerts page', async () => {
      await page.click('[data-testid="nav-alerts"]');
      await page.waitForURL(/#\/alerts$/);
      await until('the alerts page to be live', async () => (await page.getAttribute('#alert-groups', 'data-state')) === 'live', { timeout: 20_000 });
      const e2eRows = page.locator('[data-testid="alert-row"][data-alert-key="e2e-disk"]');
      assert.equal(await e2eRows.count(), 0, 'no e2e alert before sending one');
      await page.evaluate(() => { window.__e2eNoReload = true; });
      await tether(['alert', 'send', '--status', 'Warning', '--key', 'e2e-disk', '--label', 'mount=/e2e', '--description', 'e2e alert: **/e2e** is `93%` full']);
      await until('the e2e alert row', async () => (await e2eRows.count()) > 0, { timeout: 45_000 });
      const row = e2eRows.first();
      await waitText(row.locator('[data-testid="alert-status"]'), /^Warning$/);
      await waitText(row.locator('[data-testid="alert-description"]'), /e2e alert: \/e2e is 93% full/);
      // The description is Markdown, rendered (never as HTML from a string).
      await waitText(row.locator('[data-testid="alert-description"] strong'), /^\/e2e$/);
      await waitText(row.locator('[data-testid="alert-description"] code'), /^93%$/);
      await waitText(row.locator('[data-testid="alert-labels"]'), /mount=\/e2e/);
      assert.equal(await page.evaluate(() => window.__e2eNoReload), true, 'the page was not reloaded');
      // Grouped by host (the default): in this host's group, with its date and time.
      const group = page.locator(`[data-testid="alert-group"][data-group="${agentId}"]`);
      assert.equal(await group.locator('[data-testid="alert-row"][data-alert-key="e2e-disk"]').count(), 1, 'the alert is in its host\'s group');
      await waitText(row.locator('[data-testid="alert-when"] time').first(), /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$/);
      // The title is readable: the description's first line without its Markdown marks.
      await waitText(row.locator('[data-testid="alert-title"]'), /^e2e alert: \/e2e is 93% full$/);
    });

    await t.test('Alertmanager alerts: grouped by host or alert name, firing first, Markdown rendered safely', { skip: SOURCE_TOKEN ? false : 'TETHER_ALERT_SOURCE_TOKEN is not set (scripts/e2e.sh adds an alert source)' }, async () => {
      const host = os.hostname();
      const now = Date.now();
      const iso = (ms) => new Date(ms).toISOString();
      const result = await postAlertmanager(base, [
        {
          status: 'firing',
          labels: { alertname: 'E2EHighLoad', instance: `${host}:9100`, job: 'node', severity: 'warning' },
          annotations: {
            summary: `Load is high on ${host}`,
            description: [
              '## E2E load',
              '',
              'The 5-minute load is **4.2** on `this host`.',
              '',
              '- check `top`',
              '- see [the runbook](https://runbooks.e2e.invalid/load)',
              '',
              '<img src=x onerror="window.__e2eXss=1"> <script>window.__e2eXss=2</script> [bad](javascript:window.__e2eXss=3)',
            ].join('\n'),
            runbook_url: 'https://runbooks.e2e.invalid/load',
          },
          startsAt: iso(now - 60_000),
          endsAt: '0001-01-01T00:00:00Z',
          generatorURL: 'http://prometheus.e2e.invalid:9090/graph?g0.expr=load',
          fingerprint: 'e2e0000000000001',
        },
        {
          // Resolved, and the newest change of all: it still comes after the firing ones.
          status: 'resolved',
          labels: { alertname: 'E2EHighLoad', instance: `${host}:9100`, job: 'node-exporter-2', severity: 'warning' },
          annotations: { summary: 'Load was high', description: 'It *was* high.' },
          startsAt: iso(now - 600_000),
          endsAt: iso(now),
          fingerprint: 'e2e0000000000002',
        },
        {
          // No agent is called this: a fleet alert.
          status: 'firing',
          labels: { alertname: 'E2EDiskFull', instance: 'e2e-ghost-host:9100', job: 'node', severity: 'critical' },
          annotations: { summary: 'Disk full', description: '*/data* is 99% full on a host tether does not know.' },
          startsAt: iso(now - 30_000),
          endsAt: '0001-01-01T00:00:00Z',
          fingerprint: 'e2e0000000000003',
        },
      ]);
      assert.deepEqual(result, { stored: 3, duplicates: 0 });

      // They arrive live (the page was not reloaded).
      const rows = page.locator('[data-testid="alert-row"][data-source="alertmanager"]');
      await until('three Alertmanager rows', async () => (await rows.count()) === 3, { timeout: 20_000 });
      assert.equal(await page.evaluate(() => window.__e2eNoReload), true, 'the page was not reloaded');

      // Grouped by host: this host's group holds the agent's alert and both E2EHighLoad ones,
      // the resolved one last; the unroutable one is in the fleet group.
      const mine = page.locator(`[data-testid="alert-group"][data-group="${agentId}"]`);
      await until('the host group to hold its three alerts', async () => (await mine.locator('[data-testid="alert-row"]').count()) >= 3);
      await waitText(mine.locator('[data-testid="alert-group-name"] a[data-testid="host-link"]'), new RegExp(`^${host}$`));
      const fleet = page.locator('[data-testid="alert-group"][data-group=""]');
      await waitText(fleet.locator('[data-testid="alert-group-name"]'), /^Fleet/);
      await waitText(fleet.locator('[data-testid="alert-title"]'), /^E2EDiskFull$/);
      let groups = await shownGroups(page);
      assertFiringFirst(groups);
      const mineRows = groups.find((g) => g.group === agentId).rows;
      assert.equal(mineRows.at(-1).state, 'resolved', `the resolved alert comes last: ${JSON.stringify(mineRows)}`);
      assert.equal(mineRows.at(-1).title, 'E2EHighLoad');
      const firingLoad = mineRows.find((r) => r.title === 'E2EHighLoad' && r.state === 'firing');
      assert.ok(firingLoad, 'the firing E2EHighLoad is in the host group');
      loadAlertId = firingLoad.id;

      // Diagnose is offered on firing alerts of a host only.
      const loadRow = page.locator(`[data-testid="alert-row"][data-alert-id="${loadAlertId}"]`);
      assert.equal(await loadRow.locator('[data-testid="alert-diagnose"]').count(), 1, 'Diagnose on a firing alert');
      assert.equal(await mine.locator('[data-testid="alert-row"][data-state="resolved"] [data-testid="alert-diagnose"]').count(), 0, 'no Diagnose on a resolved alert');
      assert.equal(await fleet.locator('[data-testid="alert-diagnose"]').count(), 0, 'no Diagnose on a fleet alert (no host to ask)');

      // The description is Markdown, rendered as elements; its HTML stays text.
      const desc = loadRow.locator('[data-testid="alert-description"]');
      await waitText(desc.locator('h2'), /^E2E load$/);
      await waitText(desc.locator('strong'), /^4\.2$/);
      assert.equal(await desc.locator('li').count(), 2);
      const link = desc.locator('a[href="https://runbooks.e2e.invalid/load"]');
      assert.equal(await link.getAttribute('target'), '_blank');
      assert.match(await link.getAttribute('rel'), /noopener/);
      assert.equal(await desc.locator('img, script, [onerror]').count(), 0, 'no HTML from the description');
      assert.equal(await desc.locator('a[href^="javascript"]').count(), 0, 'no javascript: link');
      await waitText(desc, /<img src=x onerror="window\.__e2eXss=1">/);
      assert.equal(await page.evaluate(() => window.__e2eXss), undefined, 'nothing in the description ran');
      await waitText(loadRow.locator('[data-testid="alert-when"] time').first(), /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$/);
      await screenshot(page, 'e2e-alerts');

      // Grouped by alert name: both E2EHighLoad alerts together, a Host column, firing first.
      await page.click('#alerts-group-alertname');
      await until('the E2EHighLoad group', async () => (await page.locator('[data-testid="alert-group"][data-group="E2EHighLoad"] [data-testid="alert-row"]').count()) === 2);
      groups = await shownGroups(page);
      assertFiringFirst(groups);
      const load = groups.find((g) => g.group === 'E2EHighLoad');
      assert.deepEqual(load.rows.map((r) => r.state), ['firing', 'resolved']);
      assert.ok(groups.some((g) => g.group === 'E2EDiskFull' && g.rows.length === 1), 'the fleet alert has its own group');
      await waitText(page.locator('[data-testid="alert-group"][data-group="E2EDiskFull"] [data-testid="alert-host"]'), /^fleet$/);
      await waitText(page.locator(`[data-testid="alert-group"][data-group="E2EHighLoad"] [data-testid="alert-row"][data-alert-id="${loadAlertId}"] [data-testid="host-link"]`), new RegExp(`^${host}$`));
      assert.equal(await page.getAttribute('#alerts-group-alertname', 'aria-pressed'), 'true');
      await screenshot(page, 'e2e-alerts-by-name');
      // The choice is remembered; back to hosts.
      await page.click('#alerts-group-host');
      await page.locator(`[data-testid="alert-group"][data-group="${agentId}"]`).waitFor();
    });

    await t.test('the alert page: timeline, labels, annotations; Ack with a comment', { skip: SOURCE_TOKEN ? false : 'no alert source' }, async () => {
      await page.locator(`[data-testid="alert-row"][data-alert-id="${loadAlertId}"] [data-testid="alert-title"]`).click();
      await page.waitForURL(new RegExp(`#/alert/${loadAlertId}$`));
      await waitText(page.locator('#alert-title'), /^E2EHighLoad$/);
      await waitText(page.locator('#alert-live'), /^live$/);
      await waitText(page.locator('#alert-badges [data-testid="alert-status"]'), /^Warning$/);
      await waitText(page.locator('#alert-meta [data-testid="host-link"]'), new RegExp(`^${os.hostname()}$`));
      await waitText(page.locator('[data-testid="alert-page-description"] h2'), /^E2E load$/);
      assert.equal(await page.locator('[data-testid="alert-page-description"] img').count(), 0);
      const labels = await page.locator('[data-testid="alert-label"]').evaluateAll((rs) => rs.map((r) => [r.dataset.name, r.querySelector('td').textContent]));
      assert.deepEqual(labels, [['alertname', 'E2EHighLoad'], ['instance', `${os.hostname()}:9100`], ['job', 'node'], ['severity', 'warning']]);
      await waitText(page.locator('[data-testid="alert-annotation"][data-name="runbook_url"] a[href="https://runbooks.e2e.invalid/load"]'), /runbooks/);
      await waitText(page.locator('[data-testid="alert-annotation"][data-name="summary"]'), /Load is high/);
      await waitText(page.locator('[data-testid="alert-route"]'), /matched agent/);
      assert.equal(await page.locator('[data-testid="alert-event"]').count(), 1, 'one event in the timeline');
      await waitText(page.locator('[data-testid="alert-event"]').first(), /firing/);
      await waitText(page.locator('[data-testid="alert-ack-current"]'), /Not acknowledged/);
      assert.equal(await page.locator('#alert-diagnose').count(), 1, 'Diagnose is offered (the alert fires)');

      await page.click('#alert-ack-open');
      await page.fill('#ack-comment', 'e2e: looking into it');
      await page.click('#ack-submit');
      const ack = page.locator('[data-testid="alert-ack-current"]');
      await waitText(ack, /acknowledged by admin at \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}: e2e: looking into it$/);
      await waitText(page.locator('[data-testid="alert-ack-comment"]'), /^e2e: looking into it$/);
      await waitText(page.locator('[data-testid="alert-ack-by"]'), /^admin$/);
      await waitText(page.locator('#alert-badges [data-testid="alert-acked"]'), /^acked$/);
      assert.equal(await page.locator('#ack-form').isVisible(), false, 'the form closes');
      await screenshot(page, 'e2e-alert-acked');
    });

    await t.test('Silence from the alert page: prefilled with its labels; listed on the silences page; expired', { skip: SOURCE_TOKEN ? false : 'no alert source' }, async () => {
      await page.click('#alert-silence-open');
      const dialog = page.locator('#silence-dialog');
      await dialog.waitFor({ state: 'visible' });
      const matchers = await dialog.locator('[data-testid="silence-matcher"]').evaluateAll((rs) => rs.map((r) => [
        r.querySelector('[data-testid="silence-matcher-name"]').value,
        r.querySelector('[data-testid="silence-matcher-op"]').value,
        r.querySelector('[data-testid="silence-matcher-value"]').value,
      ]));
      assert.deepEqual(matchers, [
        ['alertname', 'eq', 'E2EHighLoad'],
        ['instance', 'eq', `${os.hostname()}:9100`],
        ['job', 'eq', 'node'],
        ['severity', 'eq', 'warning'],
      ], 'the alert\'s labels, as equality matchers');
      assert.equal(await page.inputValue('#silence-duration'), '2h');
      // A comment is required: the form says so before the hub would.
      await page.click('#silence-submit');
      await waitText(dialog.locator('[data-testid="silence-form-error"]'), /Say why/);
      await page.fill('#silence-duration', '1h');
      await page.fill('#silence-comment', 'e2e maintenance window');
      await screenshot(page, 'e2e-silence-form');
      await page.click('#silence-submit');
      await dialog.waitFor({ state: 'detached', timeout: 20_000 });
      // The alert shows silenced, live (the hub's `silenced` frame).
      const silenced = page.locator('[data-testid="alert-silence-text"]');
      await waitText(silenced, /silenced by silence \d+/);
      silenceId = await page.locator('[data-testid="alert-silence-link"]').first().getAttribute('data-silence-id');
      await waitText(page.locator('#alert-badges [data-testid="alert-silenced"]'), /^silenced$/);
      await screenshot(page, 'e2e-alert-silenced');

      // The alerts page shows it acked and silenced.
      await page.click('[data-testid="nav-alerts"]');
      const row = page.locator(`[data-testid="alert-row"][data-alert-id="${loadAlertId}"]`);
      await until('the row acked and silenced', async () => (await row.getAttribute('data-silenced')) === 'true' && (await row.getAttribute('data-acked')) === 'true', { timeout: 20_000 });
      assert.match(await row.locator('[data-testid="alert-acked"]').getAttribute('title'), /acknowledged by admin: e2e: looking into it/);

      // The silences page lists it, with what it covers.
      await page.click('[data-testid="nav-silences"]');
      await page.waitForURL(/#\/silences$/);
      const srow = page.locator(`[data-testid="silence-row"][data-silence-id="${silenceId}"]`);
      await srow.waitFor({ timeout: 20_000 });
      await waitText(srow.locator('[data-testid="silence-state"]'), /^active$/);
      const chips = await srow.locator('[data-testid="silence-matcher-chip"]').allTextContents();
      assert.deepEqual(chips, ['alertname="E2EHighLoad"', `instance="${os.hostname()}:9100"`, 'job="node"', 'severity="warning"']);
      await waitText(srow.locator('[data-testid="silence-comment"]'), /^e2e maintenance window$/);
      await waitText(srow.locator('[data-testid="silence-created-by"]'), /^admin$/);
      await waitText(srow.locator('[data-testid="silence-ends"]'), /in (59 min|1 h)/);
      await waitText(srow.locator(`[data-testid="silence-covered-alert"][data-alert-id="${loadAlertId}"]`), /^E2EHighLoad$/);
      await screenshot(page, 'e2e-silences');

      // Expire it: it leaves the active list, shows as expired, and the alert is no longer silenced.
      await srow.locator('[data-testid="silence-expire"]').click();
      await until('the silence to leave the active list', async () => (await srow.count()) === 0, { timeout: 20_000 });
      await page.selectOption('#silences-state', 'all');
      await waitText(srow.locator('[data-testid="silence-state"]'), /^expired$/, { timeout: 20_000 });
      await waitText(srow.locator('[data-testid="silence-expired-by"]'), /expired by admin/);
      assert.equal(await srow.locator('[data-testid="silence-expire"]').count(), 0, 'no Expire on an expired silence');
      await screenshot(page, 'e2e-silences-expired');
      await page.goto(`${base}#/alert/${loadAlertId}`);
      await waitText(page.locator('[data-testid="alert-silence-text"]'), /No silence covers it/, { timeout: 20_000 });
      assert.equal(await page.locator('#alert-badges [data-testid="alert-silenced"]').count(), 0);
      // The acknowledgement stays.
      await waitText(page.locator('[data-testid="alert-ack-by"]'), /^admin$/);
    });

    await t.test('an inspect session shows the report', async () => {
      await page.click('[data-testid="nav-agents"]');
      await page.waitForURL(/#\/agents$/);
      await page.locator(`[data-agent-id="${agentId}"] [data-testid="agent-inspect"]`).click();
      await page.locator('#start-dialog').waitFor({ state: 'visible' });
      await page.selectOption('#start-mode', 'inspect');
      await page.selectOption('#start-plugin', 'system');
      await page.click('#start-submit');
      await page.waitForURL(/#\/session\/[^/]+$/, { timeout: 20_000 });
      const md = page.locator('[data-testid="assistant-text"]');
      await waitText(md.locator('h1'), /^Inspection: system on /, { timeout: 60_000 });
      await waitText(md.locator('h2'), /^Findings$/, { timeout: 30_000 });
      await waitText(page.locator('[data-testid="turn-ended"]'), /Turn completed/, { timeout: 30_000 });
      assert.ok((await md.locator('table').count()) > 0, 'the findings table is rendered as a table');
      assert.ok((await page.locator('[data-testid="tool-call"]').count()) > 0, 'the plugin ran tools');
      await waitText(page.locator('#session-mode'), /inspect/);
      await screenshot(page, 'e2e-session-inspect');
    });

    await t.test('an inspect session offers another inspection with a plugin picker, not a chat box', async () => {
      const form = page.locator('#inspect-form');
      await form.waitFor({ state: 'visible' });
      assert.equal(await page.locator('#input-form').isVisible(), false, 'no message box in an inspect session');
      const options = await page.locator('#inspect-plugin option').allTextContents();
      assert.ok(options.includes('disk') && options.includes('mem'), `plugins offered: ${options}`);
      await page.selectOption('#inspect-plugin', 'disk');
      await waitText(page.locator('#inspect-target-hint'), /Target for disk: a path/);
      await page.fill('#inspect-target', '/');
      await page.click('#inspect-run');
      const turns = page.locator('[data-testid="turn"]');
      await until('the second inspection', async () => (await turns.count()) === 2, { timeout: 30_000 });
      const second = turns.nth(1);
      await waitText(second.locator('[data-testid="turn-prompt"]'), /^disk \/$/);
      await waitText(second.locator('[data-testid="assistant-text"] h1'), /^Inspection: disk on /, { timeout: 60_000 });
      await waitText(second.locator('[data-testid="turn-ended"]'), /Turn completed/, { timeout: 30_000 });
      assert.doesNotMatch(await page.locator('[data-testid="transcript"]').textContent(), /unknown inspect plugin/);
      await waitText(page.locator('#session-state'), /^Idle$/, { timeout: 20_000 });
      inspectSession = page.url();
      await screenshot(page, 'e2e-session-inspect-again');
    });

    await t.test('a chat session: approve the shell prompt and see it run', async () => {
      await page.click('[data-testid="nav-agents"]');
      await page.waitForURL(/#\/agents$/);
      await page.locator(`[data-agent-id="${agentId}"] [data-testid="agent-chat"]`).click();
      await page.locator('#start-dialog').waitFor({ state: 'visible' });
      await page.fill('#start-message', 'hello from the e2e test');
      // Records every thinking indicator the page shows (it goes as soon as the model answers).
      await page.evaluate(() => {
        window.__e2eThinking = [];
        new MutationObserver((records) => {
          for (const r of records) {
            for (const n of r.addedNodes) {
              if (n.nodeType === 1 && n.matches('[data-testid="thinking"]')) window.__e2eThinking.push(n.textContent);
            }
          }
        }).observe(document.body, { childList: true, subtree: true });
      });
      await page.click('#start-submit');
      await page.waitForURL(/#\/session\/[^/]+$/, { timeout: 20_000 });
      chatSession = page.url();
      await waitText(page.locator('[data-testid="turn-prompt"]'), /hello from the e2e test/, { timeout: 30_000 });
      const sysinfo = page.locator('[data-testid="tool-call"][data-tool="system_info"]');
      await waitText(sysinfo.locator('[data-testid="tool-status"]'), /^ok$/, { timeout: 45_000 });
      assert.ok((await page.evaluate(() => window.__e2eThinking)).some((t) => /Thinking/.test(t)), 'a thinking indicator before the model answered');
      const shellCall = page.locator('[data-testid="tool-call"][data-tool="shell"]');
      // The prompt sits in its tool call, right under the arguments.
      const card = shellCall.locator('[data-testid="permission-card"]');
      await card.waitFor({ state: 'visible', timeout: 45_000 });
      await waitText(shellCall.locator('[data-testid="tool-args"]'), /uname/);
      await waitText(shellCall.locator('[data-testid="tool-status"]'), /^awaiting approval$/);
      assert.equal(await page.locator('[data-testid="thinking"]').count(), 0, 'no thinking indicator while a prompt waits');
      await waitText(page.locator('#session-state'), /^Waiting for approval$/);
      assert.equal(await page.getAttribute('#session-state', 'data-state'), 'requires_action');
      assert.equal(await page.locator('#cancel-turn').isVisible(), true, 'Cancel is offered while the turn runs');
      await screenshot(page, 'e2e-session-permission');

      // A message while the turn waits is refused with turn_in_progress; queue it instead.
      await page.fill('#input-text', 'and once more, please');
      await page.press('#input-text', 'Enter');
      await waitText(page.locator('#queue-offer'), /is still running/, { timeout: 20_000 });
      await page.click('#queue-send');
      await waitText(page.locator('#input-status'), /Queued \(position 1\)/, { timeout: 20_000 });

      await card.locator('[data-testid="permission-allow"]').click();
      await waitText(card.locator('[data-testid="permission-status"]'), /^Allowed by /, { timeout: 20_000 });
      const shell = page.locator('[data-testid="tool-call"][data-tool="shell"]');
      await waitText(shell.locator('[data-testid="tool-status"]'), /^ok$/, { timeout: 45_000 });
      await waitText(shell.locator('[data-testid="tool-output"]'), /exit status: 0/);
      // The answered prompt stays above the result, inside the tool call.
      const order = await shell.first().evaluate((el) => {
        const cardEl = el.querySelector('[data-testid="permission-card"]');
        const out = el.querySelector('[data-testid="tool-output"]');
        return Boolean(cardEl && out && cardEl.compareDocumentPosition(out) & Node.DOCUMENT_POSITION_FOLLOWING);
      });
      assert.ok(order, 'the permission card comes before the tool result');
      await waitText(page.locator('[data-testid="turn-ended"]'), /Turn completed/, { timeout: 45_000 });
      assert.equal(await page.locator('[data-testid="turn"]').first().locator('[data-testid="thinking"]').count(), 0, 'the indicator goes when the turn ends');
    });

    await t.test('the queued message runs next, and Cancel stops it', async () => {
      const turns = page.locator('[data-testid="turn"]');
      await until('the queued turn', async () => (await turns.count()) === 2, { timeout: 45_000 });
      const second = turns.nth(1);
      await waitText(second.locator('[data-testid="turn-prompt"]'), /and once more, please/);
      await second.locator('[data-testid="permission-card"][data-tool="shell"]').waitFor({ state: 'visible', timeout: 45_000 });
      await page.click('#cancel-turn');
      await waitText(second.locator('[data-testid="turn-ended"]'), /Turn cancelled/, { timeout: 30_000 });
      await waitText(second.locator('[data-testid="permission-status"]'), /^Denied: the turn was cancelled/, { timeout: 20_000 });
      await until('Cancel to go away', async () => !(await page.locator('#cancel-turn').isVisible()), { timeout: 20_000 });
      await waitText(page.locator('#session-state'), /^Idle$/, { timeout: 20_000 });
      await screenshot(page, 'e2e-session-chat');
    });

    await t.test('a reload re-attaches with the whole history, once', async () => {
      // Rendered text settles a moment after the last event.
      await new Promise((r) => setTimeout(r, 300));
      const before = await page.locator('[data-testid="transcript"]').textContent();
      await page.reload();
      await waitText(page.locator('#session-live'), /^live$/, { timeout: 20_000 });
      const shell = page.locator('[data-testid="tool-call"][data-tool="shell"]');
      await waitText(shell.first().locator('[data-testid="tool-output"]'), /exit status: 0/);
      await waitText(page.locator('[data-testid="tool-call"] [data-testid="permission-card"] [data-testid="permission-status"]'), /^Allowed by /);
      assert.equal(await page.locator('[data-testid="turn"]').count(), 2, 'each turn once');
      assert.equal(await shell.count(), 2, 'each shell call once');
      const after = await page.locator('[data-testid="transcript"]').textContent();
      assert.equal(after, before, 'the same transcript after a reload');
    });

    await t.test('the sessions page lists both sessions', async () => {
      await page.click('[data-testid="nav-sessions"]');
      await page.waitForURL(/#\/sessions$/);
      await until('two session rows', async () => (await page.locator('[data-testid="session-row"]').count()) >= 2, { timeout: 20_000 });
      const states = await page.locator('[data-testid="session-row-state"]').allTextContents();
      assert.ok(states.every((s) => /^(Idle|Working|Waiting for approval|Closed)$/.test(s)), `states in words: ${states}`);
      await screenshot(page, 'e2e-sessions');
    });

    await t.test('diagnose the alert from the alerts page, then close the session', async () => {
      await page.click('[data-testid="nav-alerts"]');
      await page.waitForURL(/#\/alerts$/);
      const row = page.locator('[data-testid="alert-row"][data-alert-key="e2e-disk"]').first();
      await row.waitFor({ state: 'visible', timeout: 20_000 });
      const diskAlertId = await row.getAttribute('data-alert-id');
      await row.locator('[data-testid="alert-diagnose"]').click();
      await page.locator('#start-dialog').waitFor({ state: 'visible' });
      assert.equal(await page.inputValue('#start-mode'), 'diagnose');
      assert.match(await page.inputValue('#start-alert'), /e2e alert/);
      assert.equal(await page.inputValue('#start-target'), '/e2e');
      await page.click('#start-submit');
      await page.waitForURL(/#\/session\/[^/]+$/, { timeout: 20_000 });
      await waitText(page.locator('#session-mode'), /^diagnose$/);
      await page.locator('[data-testid="turn"]').first().waitFor({ state: 'visible', timeout: 30_000 });
      // tether up's agent runs the demo script, not a model: the diagnosis is an inspection
      // report with a note, as the README says (not the demo chat).
      await waitText(page.locator('[data-testid="notice"]'), /No model is configured/, { timeout: 30_000 });
      await waitText(page.locator('[data-testid="assistant-text"] h1'), /^Inspection: /, { timeout: 60_000 });
      await waitText(page.locator('[data-testid="turn-ended"]'), /Turn completed/, { timeout: 30_000 });
      assert.equal(await page.locator('[data-testid="permission-card"]').count(), 0, 'no demo shell prompt');
      await page.click('#session-close');
      await page.click('#session-close');
      await waitText(page.locator('[data-testid="session-closed"]'), /Session closed/, { timeout: 30_000 });
      await waitText(page.locator('#session-state'), /^Closed$/, { timeout: 20_000 });
      assert.equal(await page.locator('#input-text').isDisabled(), true);
      await screenshot(page, 'e2e-session-diagnose');
      diagnoseSession = page.url();
      const sessionId = decodeURIComponent(diagnoseSession.split('#/session/')[1]);

      // The session was started for the alert: the alert page links to it.
      await page.goto(`${base}#/alert/${diskAlertId}`);
      const diag = page.locator('[data-testid="alert-diagnosis-session"]');
      await waitText(diag, new RegExp(`session ${sessionId}`), { timeout: 20_000 });
      assert.equal(await diag.getAttribute('href'), `#/session/${encodeURIComponent(sessionId)}`);
      await screenshot(page, 'e2e-alert-diagnosed');
      await diag.click();
      await page.waitForURL(new RegExp(`#/session/${encodeURIComponent(sessionId)}$`));
    });

    await t.test('the host page (from the session, sessions, fleet and alerts pages): labels, heartbeat, alerts, sessions', async () => {
      const host = os.hostname();
      // From the session page.
      const sessionHost = page.locator('#session-host [data-testid="host-link"]');
      await waitText(sessionHost, new RegExp(`^${host}$`), { timeout: 20_000 });
      await sessionHost.click();
      await page.waitForURL(new RegExp(`#/host/${agentId}$`));
      await until('the host page to load', async () => (await page.getAttribute('.host-page', 'data-state')) === 'live', { timeout: 20_000 });
      await waitText(page.locator('#host-title'), new RegExp(`^${host}$`));
      await waitText(page.locator('[data-testid="host-connected"]'), /^connected$/);
      await waitText(page.locator('[data-testid="host-heartbeat-at"] time'), /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$/, { timeout: 30_000 });
      const labels = await page.locator('#host-labels').textContent();
      assert.ok(labels.length > 0, 'labels (or a dash) are shown');
      await waitText(page.locator('#host-details'), new RegExp(agentId));
      // Its alerts: the agent's own and the Alertmanager ones routed here, not the fleet's.
      const alerts = page.locator('#host-alerts [data-testid="alert-row"]');
      await until('the host\'s alerts', async () => (await alerts.count()) >= (SOURCE_TOKEN ? 3 : 1), { timeout: 20_000 });
      const keys = await alerts.evaluateAll((rs) => rs.map((r) => r.querySelector('[data-testid="alert-title"]').textContent));
      assert.ok(keys.some((k) => /e2e alert/.test(k)), `the agent's alert: ${keys}`);
      if (SOURCE_TOKEN) {
        assert.equal(keys.filter((k) => k === 'E2EHighLoad').length, 2, `both E2EHighLoad alerts: ${keys}`);
        assert.ok(!keys.includes('E2EDiskFull'), 'not the fleet alert');
      }
      const states = await alerts.evaluateAll((rs) => rs.map((r) => r.dataset.state));
      assert.deepEqual(states, [...states].sort((a, b) => (a === 'firing' ? 0 : 1) - (b === 'firing' ? 0 : 1)), 'firing first');
      // Its sessions: the inspect, chat and diagnose sessions of this test.
      const sessions = page.locator('#host-sessions [data-testid="host-session-row"]');
      await until('the host\'s sessions', async () => (await sessions.count()) >= 3, { timeout: 20_000 });
      for (const url of [inspectSession, chatSession, diagnoseSession]) {
        const id = decodeURIComponent(url.split('#/session/')[1]);
        assert.equal(await page.locator(`#host-sessions [data-session-id="${id}"]`).count(), 1, `session ${id} is listed`);
      }
      await screenshot(page, 'e2e-host');

      // From the sessions page, the fleet page and the alerts page, too.
      await page.click('[data-testid="nav-sessions"]');
      await page.locator('[data-testid="session-row-host"] [data-testid="host-link"]').first().click();
      await page.waitForURL(new RegExp(`#/host/${agentId}$`));
      await page.click('[data-testid="nav-agents"]');
      await page.locator(`[data-testid="agent-row"][data-agent-id="${agentId}"] [data-testid="host-link"]`).click();
      await page.waitForURL(new RegExp(`#/host/${agentId}$`));
      await page.click('[data-testid="nav-alerts"]');
      await page.locator(`[data-testid="alert-group"][data-group="${agentId}"] [data-testid="alert-group-name"] [data-testid="host-link"]`).click();
      await page.waitForURL(new RegExp(`#/host/${agentId}$`));
      await waitText(page.locator('#host-title'), new RegExp(`^${host}$`));
    });

    await t.test('an observer sees Ack, Silence, Expire and Diagnose disabled, with the reason', { skip: OBSERVER_TOKEN && SOURCE_TOKEN ? false : 'TETHER_OBSERVER_TOKEN / TETHER_ALERT_SOURCE_TOKEN are not set' }, async () => {
      const observer = await launch();
      try {
        const opage = await observer.context.newPage();
        const owatch = watchPage(opage);
        await opage.goto(`${base}#/signin`);
        await opage.fill('#token', OBSERVER_TOKEN);
        await opage.click('#signin-submit');
        await opage.waitForURL(/#\/agents$/, { timeout: 20_000 });
        await waitText(opage.locator('[data-testid="whoami-class"]'), /^observer$/);

        // A human makes a silence from scratch on the silences page (for the observer to see).
        await page.click('[data-testid="nav-silences"]');
        await page.waitForURL(/#\/silences$/);
        await page.click('#silence-new');
        const dialog = page.locator('#silence-dialog');
        await dialog.waitFor({ state: 'visible' });
        assert.equal(await dialog.locator('[data-testid="silence-matcher"]').count(), 1, 'one empty matcher to start with');
        await dialog.locator('[data-testid="silence-matcher-name"]').fill('alertname');
        await dialog.locator('[data-testid="silence-matcher-op"]').selectOption('re');
        await dialog.locator('[data-testid="silence-matcher-value"]').fill('E2EDisk.*');
        await page.fill('#silence-duration', '30m');
        await page.fill('#silence-comment', 'e2e: the fleet disk alert');
        await page.click('#silence-submit');
        await dialog.waitFor({ state: 'detached', timeout: 20_000 });
        const regexRow = page.locator('[data-testid="silence-row"]', { has: page.locator('[data-testid="silence-matcher-chip"]', { hasText: 'alertname=~"E2EDisk.*"' }) });
        await regexRow.waitFor({ timeout: 20_000 });
        await waitText(regexRow.locator('[data-testid="silence-covered-alert"]'), /^E2EDiskFull$/, { timeout: 20_000 });
        await opage.goto(`${base}#/alert/${loadAlertId}`);
        await waitText(opage.locator('#alert-title'), /^E2EHighLoad$/, { timeout: 20_000 });
        for (const sel of ['#alert-ack-open', '#alert-silence-open']) {
          assert.equal(await opage.locator(sel).isDisabled(), true, `${sel} is disabled`);
          assert.match(await opage.locator(sel).getAttribute('title'), /Observers may read/);
        }
        await waitText(opage.locator('#alert-refusal'), /Observers may read alerts and silences, not acknowledge, silence or expire/);
        // Nor may they start sessions: Diagnose is shown (the alert fires) but disabled.
        assert.equal(await opage.locator('#alert-diagnose').isDisabled(), true, 'Diagnose is disabled');
        assert.match(await opage.locator('#alert-diagnose').getAttribute('title'), /Observers cannot start sessions/);
        // Reading works: the acknowledgement and the timeline are there.
        await waitText(opage.locator('[data-testid="alert-ack-by"]'), /^admin$/);
        assert.ok((await opage.locator('[data-testid="alert-event"]').count()) >= 1);
        await screenshot(opage, 'e2e-alert-observer');
        await opage.goto(`${base}#/silences`);
        await until('the silences page to load', async () => (await opage.getAttribute('#silences-table', 'data-state')) === 'live', { timeout: 20_000 });
        assert.equal(await opage.locator('#silence-new').isDisabled(), true, 'New silence is disabled');
        const expire = opage.locator('[data-testid="silence-row"][data-state="active"] [data-testid="silence-expire"]').first();
        await expire.waitFor({ timeout: 20_000 });
        assert.equal(await expire.isDisabled(), true, 'Expire is disabled');
        assert.match(await expire.getAttribute('title'), /Observers may read/);
        await screenshot(opage, 'e2e-silences-observer');
        await waitText(opage.locator('[data-testid="silences-refusal"]'), /Observers may read/);
        owatch.check();
      } finally {
        await observer.close();
      }
    });

    await t.test('an unknown session shows the error, not the session controls', async () => {
      await page.goto(`${base}#/session/s-no-such-session`);
      await waitText(page.locator('#session-error'), /^No such session: s-no-such-session \(the hub answered unknown_session/, { timeout: 20_000 });
      await waitText(page.locator('#session-title'), /^Session not found$/);
      for (const sel of ['#session-grid', '#input-form', '#inspect-form', '#session-close', '#cancel-turn']) {
        assert.equal(await page.locator(sel).isVisible(), false, `${sel} is hidden`);
      }
      await page.locator('#session-missing a[href="#/sessions"]').waitFor({ state: 'visible' });
      await screenshot(page, 'e2e-session-unknown');
    });

    await t.test('at phone width (390 px) the header wraps, tables scroll in their box, alerts become cards, the inputs stay usable', async () => {
      const phone = await context.newPage(); // same browser context: already signed in
      const phoneWatch = watchPage(phone);
      try {
        await phone.setViewportSize({ width: 390, height: 844 });
        await phone.goto(`${base}#/agents`);
        await until('the agents table to load', async () => (await phone.getAttribute('#agents-table', 'data-state')) === 'live', { timeout: 20_000 });
        await phone.locator(`[data-testid="agent-row"][data-agent-id="${agentId}"]`).waitFor({ state: 'attached', timeout: 20_000 });
        const fleet = await checkPhoneLayout(phone);
        assert.ok(fleet.tables.some((tb) => tb.scrolls), `the agents table scrolls inside its box: ${JSON.stringify(fleet.tables)}`);
        await screenshot(phone, 'e2e-phone-fleet', { fullPage: false });

        await phone.click('[data-testid="nav-alerts"]');
        await until('the alerts page to be live', async () => (await phone.getAttribute('#alert-groups', 'data-state')) === 'live', { timeout: 20_000 });
        await phone.locator('[data-testid="alert-row"]').first().waitFor({ state: 'attached' });
        const alerts = await checkPhoneLayout(phone);
        // Alert rows become cards on a phone: nothing to scroll sideways, the title on top.
        assert.ok(alerts.tables.every((tb) => !tb.scrolls), `the alert cards fit the screen: ${JSON.stringify(alerts.tables)}`);
        const card = phone.locator('[data-testid="alert-row"]').first();
        const cardBox = await card.boundingBox();
        const titleBox = await card.locator('[data-testid="alert-title"]').boundingBox();
        assert.ok(cardBox && cardBox.x >= 0 && cardBox.x + cardBox.width <= 390, `an alert card fits: ${JSON.stringify(cardBox)}`);
        assert.ok(titleBox && titleBox.y - cardBox.y < 20, `the title heads the card: ${JSON.stringify({ cardBox, titleBox })}`);
        for (const sel of ['#alerts-group-host', '#alerts-group-alertname', '#alerts-status', '#alerts-label']) {
          const b = await phone.locator(sel).boundingBox();
          assert.ok(b && b.x >= 0 && b.x + b.width <= 390, `${sel} fits: ${JSON.stringify(b)}`);
        }
        await screenshot(phone, 'e2e-phone-alerts', { fullPage: false });

        // The alert page: one column; the buttons fit.
        if (loadAlertId) {
          await phone.goto(`${base}#/alert/${loadAlertId}`);
          await waitText(phone.locator('#alert-live'), /^live$/, { timeout: 20_000 });
          await checkPhoneLayout(phone);
          for (const sel of ['#alert-diagnose', '#alert-ack-open', '#alert-silence-open']) {
            const b = await phone.locator(sel).boundingBox();
            assert.ok(b && b.x >= 0 && b.x + b.width <= 390, `${sel} fits: ${JSON.stringify(b)}`);
          }
          await screenshot(phone, 'e2e-phone-alert');
          await phone.click('#alert-silence-open');
          await phone.locator('#silence-dialog').waitFor({ state: 'visible' });
          for (const sel of ['#silence-duration', '#silence-comment', '#silence-submit']) {
            const b = await phone.locator(sel).boundingBox();
            assert.ok(b && b.x >= 0 && b.x + b.width <= 390, `${sel} fits: ${JSON.stringify(b)}`);
          }
          await screenshot(phone, 'e2e-phone-silence-form', { fullPage: false });
          await phone.click('#silence-cancel');
          await phone.goto(`${base}#/silences`);
          await until('the silences page to load', async () => (await phone.getAttribute('#silences-table', 'data-state')) === 'live', { timeout: 20_000 });
          await phone.selectOption('#silences-state', 'all');
          await phone.locator('[data-testid="silence-row"]').first().waitFor({ timeout: 20_000 });
          await checkPhoneLayout(phone);
          await screenshot(phone, 'e2e-phone-silences', { fullPage: false });
        }

        // The host page.
        await phone.goto(`${base}#/host/${agentId}`);
        await until('the host page to load', async () => (await phone.getAttribute('.host-page', 'data-state')) === 'live', { timeout: 20_000 });
        await checkPhoneLayout(phone);
        await screenshot(phone, 'e2e-phone-host');

        // The chat session: the message box and Send fit the screen and take text.
        await phone.goto(chatSession);
        await waitText(phone.locator('#session-live'), /^live$/, { timeout: 20_000 });
        await checkPhoneLayout(phone);
        const box = await phone.locator('#input-text').boundingBox();
        const send = await phone.locator('#input-send').boundingBox();
        assert.ok(box && box.width >= 300 && box.x >= 0 && box.x + box.width <= 390, `message box: ${JSON.stringify(box)}`);
        assert.ok(send && send.x >= 0 && send.x + send.width <= 390, `Send button: ${JSON.stringify(send)}`);
        await phone.fill('#input-text', 'typed on a phone');
        assert.equal(await phone.inputValue('#input-text'), 'typed on a phone');
        await phone.fill('#input-text', '');
        await screenshot(phone, 'e2e-phone-session-chat', { fullPage: false });

        // The inspect session: the findings tables scroll inside their box; the form fits.
        await phone.goto(inspectSession);
        await waitText(phone.locator('#session-live'), /^live$/, { timeout: 20_000 });
        await phone.locator('#inspect-form').waitFor({ state: 'visible' });
        const inspect = await checkPhoneLayout(phone);
        // Wide report tables (top processes has nine columns) scroll rather than squeeze.
        assert.ok(inspect.tables.some((tb) => tb.scrolls), `a report table scrolls inside its box: ${JSON.stringify(inspect.tables)}`);
        for (const sel of ['#inspect-plugin', '#inspect-target', '#inspect-run']) {
          const b = await phone.locator(sel).boundingBox();
          assert.ok(b && b.x >= 0 && b.x + b.width <= 390, `${sel} fits: ${JSON.stringify(b)}`);
        }
        await screenshot(phone, 'e2e-phone-session-inspect');
        phoneWatch.check();
      } finally {
        await phone.close();
      }
    });

    watch.check();
  } catch (e) {
    await screenshot(page, 'e2e-failure').catch(() => {});
    throw e;
  } finally {
    await close();
  }
});
