// Shared helpers of the console tests: the browser, bounded waits, screenshots.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const OUTPUT = path.join(HERE, 'output');
export const CONSOLE_DIR = path.resolve(HERE, '../../crates/tether-hub/console');

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * Launches Chromium. Playwright gives every `chromium.launch` a fresh temporary user-data-dir
 * (it refuses an explicit `--user-data-dir`) and deletes it on close, so no state survives
 * between runs. Returns {browser, context, close}.
 */
export async function launch() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: CHROMIUM_ARGS,
    timeout: 60_000,
  });
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  context.setDefaultTimeout(15_000);
  context.setDefaultNavigationTimeout(20_000);
  return {
    browser,
    context,
    async close() {
      await context.close().catch(() => {});
      await browser.close().catch(() => {});
    },
  };
}

/** Records console errors and uncaught exceptions of a page; `check()` throws if there were any. */
export function watchPage(page, { ignore = [] } = {}) {
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    if (ignore.some((re) => re.test(text))) return;
    problems.push(`console error: ${text}`);
  });
  return {
    problems,
    check() {
      if (problems.length) throw new Error(`the page reported problems:\n${problems.join('\n')}`);
    },
  };
}

/** Polls `fn` until it returns a truthy value; throws `what` after `timeout` ms. */
export async function until(what, fn, { timeout = 15_000, interval = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last instanceof Error ? ` (last error: ${last.message})` : ''}`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** Waits until the locator's text matches `re` (the first matching element if several). */
export async function waitText(locator, re, { timeout = 15_000 } = {}) {
  let seen = '';
  try {
    return await until(`text ${re} in ${locator}`, async () => {
      const texts = await locator.allTextContents();
      seen = texts.join(' | ');
      return texts.find((t) => re.test(t));
    }, { timeout });
  } catch (e) {
    e.message += `\n  last text seen: ${JSON.stringify(seen.slice(0, 2000))}`;
    throw e;
  }
}

export async function screenshot(page, name) {
  fs.mkdirSync(OUTPUT, { recursive: true });
  const file = path.join(OUTPUT, `${name}.png`);
  // A full-page capture draws sticky bars where the viewport happens to be; unstick them.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({
    path: file,
    fullPage: true,
    timeout: 15_000,
    style: '.topbar, .composer, .session-side { position: static !important; }',
  });
  return file;
}
