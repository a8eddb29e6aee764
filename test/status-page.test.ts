/**
 * The status page in a real browser (Debian's chromium driven by playwright-core) against a real
 * mesh: it loads without console errors, shows three counters up, one down within the heartbeat
 * bound after a SIGKILL and up again after its restart, and its write rate moves while items are
 * posted. It writes a fresh screenshot to test-output/status-page.png (ignored by git; the README
 * shows a copy of one kept in docs/status-page.png). A second test drives
 * the API key flow against an in-process coordinator.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import pino from 'pino';
import { chromium, type Browser, type Page } from 'playwright-core';
import { Mesh } from './support/mesh.ts';
import { waitFor } from '../src/shared/wait.ts';
import { buildCoordinatorServer } from '../src/coordinator/server.ts';
import { coordinatorConfig } from '../src/shared/config.ts';

const CHROMIUM = '/usr/bin/chromium';
/** Where the README says each run writes its screenshot (a tracked copy lives in docs/). */
const SCREENSHOT = fileURLToPath(new URL('../test-output/status-page.png', import.meta.url));
/** The mesh's HEARTBEAT_MS (test/support/mesh.ts). */
const HEARTBEAT_MS = 500;

async function launch(): Promise<Browser> {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium (.ci/run does it)`);
  return chromium.launch({ executablePath: CHROMIUM });
}

/** Console errors and uncaught exceptions of the page, except those `allowed` matches. */
function watchErrors(page: Page, allowed?: RegExp): string[] {
  const errors: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && !allowed?.test(m.text())) errors.push(m.text());
  });
  page.on('pageerror', (e) => errors.push(e.message));
  return errors;
}

const rowState = (page: Page, id: string) => page.locator(`tbody tr[data-counter="${id}"]`).getAttribute('data-state', { timeout: 1000 });
const upCount = (page: Page) => page.locator('tbody tr[data-state="up"]').count();
const latestWrites = async (page: Page) => Number(await page.locator('#chart-writes').getAttribute('data-latest', { timeout: 1000 }));

test('the live page: 3 counters up, one down after SIGKILL and up after restart, write rate moves', async () => {
  const mesh = await Mesh.start({ counters: 3 });
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 780 } });
    const errors = watchErrors(page);
    await page.goto(mesh.url('/'));

    await waitFor(async () => (await upCount(page)) === 3, 10_000, 'three counters shown up');
    // landmarks, a table with headers, a live region
    assert.is(await page.locator('header').count(), 1);
    assert.is(await page.locator('main').count(), 1);
    assert.is(await page.locator('footer').count(), 1);
    assert.is(await page.locator('thead th[scope="col"]').count(), 6);
    assert.is(await page.locator('tbody th[scope="row"]').count(), 3);
    assert.is(await page.locator('[aria-live="polite"]').count(), 1);
    assert.is(await page.locator('#connection').getAttribute('data-state'), 'live');

    const victim = mesh.counters[1]!;
    const killedAt = Date.now();
    await victim.process.kill('SIGKILL');
    // two silent heartbeats drop a link; one more second for the page's next event
    const bound = 2 * HEARTBEAT_MS + 1000;
    await waitFor(async () => (await rowState(page, victim.id)) === 'down', bound + 2000, `${victim.id} shown down`);
    const took = Date.now() - killedAt;
    assert.ok(took <= bound + 1000, `${victim.id} shown down after ${took} ms (bound ${bound} ms)`);
    assert.is(await upCount(page), 2);
    assert.match((await page.locator('#announce').textContent()) ?? '', new RegExp(`Counter ${victim.id} is down`));

    await mesh.restartCounter(victim);
    await waitFor(async () => (await rowState(page, victim.id)) === 'up', 15_000, `${victim.id} shown up after restart`);
    assert.match((await page.locator('#announce').textContent()) ?? '', new RegExp(`Counter ${victim.id} is up`));

    // the write rate moves while items are posted (and stops being 0 only because of them)
    assert.is(await latestWrites(page), 0, 'no writes yet');
    let posting = true;
    let n = 0;
    const poster = (async () => {
      while (posting) {
        assert.is(await mesh.post({ id: `sp-${n++}`, tenant: 'status-page' }), 200);
        if (n % 10 === 0) await mesh.count('status-page');
      }
    })();
    try {
      // a few seconds of writes, so the chart in the screenshot shows a line
      let seconds = 0;
      let last = -1;
      await waitFor(async () => {
        const v = await latestWrites(page);
        if (v > 0 && v !== last) seconds++;
        last = v;
        return seconds >= 4;
      }, 20_000, 'the write rate to move for a few seconds', 100);
    } finally {
      posting = false;
      await poster;
    }
    assert.ok(n > 0);
    assert.ok(Number(await page.locator('#chart-reads').getAttribute('data-latest')) >= 0);

    fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    assert.ok(fs.statSync(SCREENSHOT).size > 10_000, 'a screenshot with content');

    // readable on a phone: nothing wider than the screen
    await page.setViewportSize({ width: 375, height: 740 });
    // a string, evaluated in the page: the tests are type-checked without the DOM library
    const overflow = (await page.evaluate('document.documentElement.scrollWidth - window.innerWidth')) as number;
    assert.ok(overflow <= 0, `the page is ${overflow} px wider than a phone screen`);
    const tableOverflow = (await page.evaluate('(e => e.scrollWidth - e.clientWidth)(document.querySelector(".table-wrap"))')) as number;
    assert.ok(tableOverflow <= 0, `the table needs ${tableOverflow} px of sideways scrolling on a phone`);

    assert.equal(errors, [], 'no console errors');
  } finally {
    await browser.close();
    await mesh.close();
  }
});

test('with API_KEY: the page asks for the key, refuses a wrong one, and takes it from the URL fragment', async () => {
  const pool = {
    anyUsable: true,
    view: () => [{ id: 'solo', address: '127.0.0.1:1', reachable: true, ready: true, lastHeardAt: new Date().toISOString(), items: 7, replicationLagSeconds: 0 }],
    count: async () => 0,
    add: async () => 0,
    replicas: () => [],
  };
  const app = buildCoordinatorServer(coordinatorConfig({ API_KEY: 's3cret key' }), pool, pino({ level: 'silent' }));
  await app.listen({ host: '127.0.0.1', port: 0 });
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  const browser = await launch();
  try {
    const page = await browser.newPage();
    // the browser reports each refused stream request (401) as a console error: expected here
    const errors = watchErrors(page, /status of 401/);
    await page.goto(`${base}/`);
    const form = page.locator('#key-form');
    await waitFor(() => form.isVisible(), 5000, 'the key form');
    assert.is(await upCount(page), 0, 'no data without the key');
    // keyboard only: the form has focus
    assert.is(await page.evaluate('document.activeElement && document.activeElement.id'), 'key');
    await page.keyboard.type('wrong');
    await page.keyboard.press('Enter');
    await waitFor(async () => /refused that key/.test((await page.locator('#key-error').textContent()) ?? ''), 5000, 'the wrong key refused');
    await page.keyboard.type('s3cret key');
    await page.keyboard.press('Enter');
    await waitFor(async () => (await upCount(page)) === 1, 5000, 'the counter shown after the right key');
    assert.ok(await form.isHidden());

    const second = await browser.newPage();
    const secondErrors = watchErrors(second);
    await second.goto(`${base}/#key=${encodeURIComponent('s3cret key')}`);
    await waitFor(async () => (await upCount(second)) === 1, 5000, 'the counter shown with the key from the fragment');
    assert.not.match(second.url(), /key=/, 'the key is removed from the address bar');
    assert.equal([...errors, ...secondErrors], [], 'no other console errors');
  } finally {
    await browser.close();
    await app.close();
  }
});

test.run();
