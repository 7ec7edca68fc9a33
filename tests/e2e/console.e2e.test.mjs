// End to end: the hub console in Chromium against a real `tether up` (a hub and a local agent
// on loopback). Run by scripts/e2e.sh, which starts `tether up` and passes:
//   TETHER_CONSOLE_URL      the console's URL (`console: …` in tether up's output)
//   TETHER_OPERATOR_TOKEN   the operator token (`operator token: …`)
//   TETHER_BIN              the tether binary (for `tether alert send`)
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
      await until('the alerts page to be live', async () => (await page.getAttribute('#alerts-table', 'data-state')) === 'live', { timeout: 20_000 });
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
      const firstKey = await page.locator('[data-testid="alert-row"]').first().getAttribute('data-alert-key');
      assert.equal(firstKey, 'e2e-disk', 'the new alert is on top');
      await screenshot(page, 'e2e-alerts');
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

    await t.test('at phone width (390 px) the header wraps, tables scroll in their box, the inputs stay usable', async () => {
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
        await until('the alerts page to be live', async () => (await phone.getAttribute('#alerts-table', 'data-state')) === 'live', { timeout: 20_000 });
        await phone.locator('[data-testid="alert-row"]').first().waitFor({ state: 'attached' });
        const alerts = await checkPhoneLayout(phone);
        assert.ok(alerts.tables.some((tb) => tb.scrolls), `the alerts table scrolls inside its box: ${JSON.stringify(alerts.tables)}`);
        await screenshot(phone, 'e2e-phone-alerts', { fullPage: false });

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
