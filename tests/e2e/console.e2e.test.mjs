// End to end: the hub console in Chromium against a real `tether up` (a hub and a local agent
// on loopback). Run by scripts/e2e.sh, which starts `tether up` and passes:
//   TETHER_CONSOLE_URL      the console's URL (`console: …` in tether up's output)
//   TETHER_OPERATOR_TOKEN   the operator token (`operator token: …`)
//   TETHER_BIN              the tether binary (for `tether alert send`)
//   XDG_DATA_HOME / XDG_CONFIG_HOME   the throwaway home tether up runs in
// Screenshots of every page go to tests/e2e/output/e2e-*.png.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import os from 'node:os';
import { launch, watchPage, waitText, until, screenshot } from './lib.mjs';

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
      await tether(['alert', 'send', '--status', 'Warning', '--key', 'e2e-disk', '--label', 'mount=/e2e', '--description', 'e2e alert']);
      await until('the e2e alert row', async () => (await e2eRows.count()) > 0, { timeout: 45_000 });
      const row = e2eRows.first();
      await waitText(row.locator('[data-testid="alert-status"]'), /^Warning$/);
      await waitText(row.locator('[data-testid="alert-description"]'), /e2e alert/);
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

    await t.test('a chat session: approve the shell prompt and see it run', async () => {
      await page.click('[data-testid="nav-agents"]');
      await page.waitForURL(/#\/agents$/);
      await page.locator(`[data-agent-id="${agentId}"] [data-testid="agent-chat"]`).click();
      await page.locator('#start-dialog').waitFor({ state: 'visible' });
      await page.fill('#start-message', 'hello from the e2e test');
      await page.click('#start-submit');
      await page.waitForURL(/#\/session\/[^/]+$/, { timeout: 20_000 });
      await waitText(page.locator('[data-testid="turn-prompt"]'), /hello from the e2e test/, { timeout: 30_000 });
      const sysinfo = page.locator('[data-testid="tool-call"][data-tool="system_info"]');
      await waitText(sysinfo.locator('[data-testid="tool-status"]'), /^ok$/, { timeout: 45_000 });
      const card = page.locator('[data-testid="permission-card"][data-tool="shell"]');
      await card.waitFor({ state: 'visible', timeout: 45_000 });
      await waitText(card.locator('[data-testid="permission-args"]'), /uname/);
      await waitText(page.locator('#session-state'), /requires_action/);
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
      await waitText(page.locator('[data-testid="turn-ended"]'), /Turn completed/, { timeout: 45_000 });
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
      await waitText(page.locator('#session-state'), /^idle$/, { timeout: 20_000 });
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
      await waitText(page.locator('[data-testid="permission-card"] [data-testid="permission-status"]'), /^Allowed by /);
      assert.equal(await page.locator('[data-testid="turn"]').count(), 2, 'each turn once');
      assert.equal(await shell.count(), 2, 'each shell call once');
      const after = await page.locator('[data-testid="transcript"]').textContent();
      assert.equal(after, before, 'the same transcript after a reload');
    });

    await t.test('the sessions page lists both sessions', async () => {
      await page.click('[data-testid="nav-sessions"]');
      await page.waitForURL(/#\/sessions$/);
      await until('two session rows', async () => (await page.locator('[data-testid="session-row"]').count()) >= 2, { timeout: 20_000 });
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
      await page.click('#session-close');
      await page.click('#session-close');
      await waitText(page.locator('[data-testid="session-closed"]'), /Session closed/, { timeout: 30_000 });
      await waitText(page.locator('#session-state'), /^closed$/, { timeout: 20_000 });
      assert.equal(await page.locator('#input-text').isDisabled(), true);
      await screenshot(page, 'e2e-session-diagnose');
    });

    watch.check();
  } catch (e) {
    await screenshot(page, 'e2e-failure').catch(() => {});
    throw e;
  } finally {
    await close();
  }
});
