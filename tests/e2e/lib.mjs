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

/** Saves a PNG of the page (the whole page, or what the viewport shows with `fullPage: false`). */
export async function screenshot(page, name, { fullPage = true } = {}) {
  fs.mkdirSync(OUTPUT, { recursive: true });
  const file = path.join(OUTPUT, `${name}.png`);
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({
    path: file,
    fullPage,
    timeout: 15_000,
    // A full-page capture draws sticky bars where the viewport happens to be; unstick them.
    style: fullPage ? '.topbar, .composer, .session-side { position: static !important; }' : undefined,
  });
  return file;
}

/**
 * Checks a page laid out for a narrow screen: the page itself never scrolls sideways, the
 * header's items all fit (it wraps instead), and every table box stays inside the screen
 * (a wide table scrolls inside its box). Returns {tables: [{scrolls}]}; throws on a problem.
 */
export async function checkPhoneLayout(page) {
  const r = await page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    const problems = [];
    const visible = (el) => {
      const b = el.getBoundingClientRect();
      return b.width > 0 && b.height > 0 && getComputedStyle(el).visibility !== 'hidden';
    };
    if (document.documentElement.scrollWidth > width + 1) {
      const wide = [...document.querySelectorAll('main *')]
        .filter((el) => visible(el) && el.getBoundingClientRect().right > width + 1 && !el.closest('.table-wrap, .md-table'))
        .slice(0, 5)
        .map((el) => `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ''}.${el.className} (right ${Math.round(el.getBoundingClientRect().right)})`);
      problems.push(`the page is ${document.documentElement.scrollWidth} px wide on a ${width} px screen; too wide: ${wide.join(', ')}`);
    }
    const bar = document.querySelector('.topbar');
    for (const el of bar.children) {
      if (!visible(el)) continue;
      const b = el.getBoundingClientRect();
      if (b.left < -1 || b.right > width + 1) problems.push(`header item ${el.id || el.className} runs off the screen (${Math.round(b.left)}–${Math.round(b.right)})`);
    }
    const tables = [...document.querySelectorAll('.table-wrap, .md-table')].filter(visible).map((el) => {
      const b = el.getBoundingClientRect();
      if (b.right > width + 1) problems.push(`a table box ends at ${Math.round(b.right)} px`);
      return { scrolls: el.scrollWidth > el.clientWidth, width: Math.round(b.width), content: el.scrollWidth };
    });
    return { problems, tables, headerHeight: Math.round(bar.getBoundingClientRect().height) };
  });
  if (r.problems.length) throw new Error(`phone layout of ${page.url()}:\n${r.problems.join('\n')}`);
  return r;
}
