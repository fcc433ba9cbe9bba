/** Headless Chromium for the console tests (Debian's chromium, driven by playwright-core). */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Locator, type Page } from 'playwright-core';
import { expect } from 'vitest';
import { cleanup, ROOT, tempDir } from './helpers.js';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const ARTIFACTS = join(ROOT, 'test-artifacts');

export async function openBrowser(): Promise<BrowserContext> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium is not installed at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  }
  const context = await chromium.launchPersistentContext(tempDir('rhizo-chromium-'), {
    executablePath: CHROMIUM,
    // The machine has no network: background fetches of Chromium's own would only fail.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 760 },
  });
  cleanup(() => context.close());
  return context;
}

export function artifact(name: string): string {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, name);
}

/** A fresh page whose script errors and dialogs (alert, confirm) fail the test that opened it. */
export async function openPage(): Promise<Page> {
  const page = await (await openBrowser()).newPage();
  const problems: string[] = [];
  page.on('pageerror', (error) => problems.push(error.message));
  page.on('dialog', (dialog) => {
    problems.push(`dialog: ${dialog.message()}`);
    void dialog.dismiss();
  });
  cleanup(() => expect(problems, 'errors in the page').toEqual([]));
  return page;
}

/** Runs a command from the open device page and waits for its result card (output, or the error). */
export async function runCommand(page: Page, command: string, order = 'exec_bash'): Promise<Locator> {
  await page.selectOption('.order', order);
  await page.fill('.command-input', command);
  await page.press('.command-input', 'Enter');
  const card = page.locator('.result').last();
  await card.locator('.result-foot, .result-status.error').first().waitFor();
  return card;
}
