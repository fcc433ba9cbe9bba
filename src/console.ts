/**
 * Serves the web console (web/, compiled to dist/web/ by the build), the client SDK it talks to
 * the hub with and the MQTT.js browser bundle under that, from the hub's own HTTP port: no CDN,
 * works without internet.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import express, { type Express } from 'express';
import { PACKAGE_ROOT } from './package-root.js';

const require = createRequire(import.meta.url);

/**
 * The compiled modules of the client SDK (dist/src/) the console loads: the import map sends
 * `rhizosphere/client` to /sdk/client/index.js, and its relative imports follow. Only these are
 * served, nothing else of dist/ (the hub's own code stays private). Each imports no bare
 * specifier but `mqtt`, and nothing Node-only.
 */
export const SDK_MODULES = [
  'client/index.js',
  'client/emitter.js',
  'client/errors.js',
  'client/rest.js',
  'client/types.js',
  'client/tunnel.js',
  'client/sha256.js',
  'protocol/ids.js',
  'protocol/topics.js',
  'protocol/tunnel.js',
  'errors.js',
] as const;

/**
 * xterm.js for the console's terminals and recording player, from node_modules like the MQTT
 * bundle: its ES module, the fit addon and its stylesheet, each at a fixed URL.
 */
const XTERM_FILES = {
  '/vendor/xterm.mjs': '@xterm/xterm/lib/xterm.mjs',
  '/vendor/addon-fit.mjs': '@xterm/addon-fit/lib/addon-fit.mjs',
  '/vendor/xterm.css': '@xterm/xterm/css/xterm.css',
} as const;

/**
 * uPlot for the console's health charts (docs/protocol.md "Health telemetry"): its ES module and
 * stylesheet. It draws on canvas and sets element styles from script (CSSOM), which the policy
 * below allows without anything more.
 */
const UPLOT_FILES = {
  '/vendor/uPlot.esm.js': 'uplot/dist/uPlot.esm.js',
  '/vendor/uPlot.min.css': 'uplot/dist/uPlot.min.css',
} as const;

/**
 * The Content-Security-Policy of the console: its own scripts only, plus the one inline
 * import map of index.html, allowed by its hash; Web Worker timers come from blob: URLs.
 *
 * Styles are the one relaxation, for xterm.js: its renderer injects <style> elements (the
 * cell size measured from the font, the theme's colours) and sets a style attribute on cells
 * with 24-bit colours, so it needs 'unsafe-inline' for styles. Scripts stay as strict as
 * before, and the console never builds markup from the hub's data (textContent only), so no
 * injected markup exists to be styled.
 */
export function consoleContentSecurityPolicy(): string {
  const html = readFileSync(join(PACKAGE_ROOT, 'web', 'index.html'), 'utf8');
  const inline = /<script type="importmap">([\s\S]*?)<\/script>/.exec(html)?.[1] ?? '';
  const hash = createHash('sha256').update(inline).digest('base64');
  return [
    "default-src 'self'",
    `script-src 'self' 'sha256-${hash}'`,
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "connect-src 'self' ws: wss:",
    "worker-src 'self' blob:",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
  ].join('; ');
}

export function mountConsole(app: Express): void {
  const webDir = join(PACKAGE_ROOT, 'web');
  const assetsDir = join(PACKAGE_ROOT, 'dist', 'web');
  const sdkDir = join(PACKAGE_ROOT, 'dist', 'src');
  const missing = [join(assetsDir, 'main.js'), ...SDK_MODULES.map((file) => join(sdkDir, file))].find((file) => !existsSync(file));
  if (missing) {
    throw new Error(`the console is not built (${missing} is missing): run npm run build`);
  }
  const mqttBundle = require.resolve('mqtt/dist/mqtt.esm');
  const noCache = { setHeaders: (res: express.Response) => res.setHeader('cache-control', 'no-cache') };

  app.get('/', (_req, res) => {
    res.setHeader('cache-control', 'no-cache');
    res.sendFile(join(webDir, 'index.html'));
  });
  app.get('/login', (_req, res) => {
    res.setHeader('cache-control', 'no-cache');
    res.sendFile(join(webDir, 'login.html'));
  });
  app.get('/console.css', (_req, res) => {
    res.setHeader('cache-control', 'no-cache');
    res.sendFile(join(webDir, 'console.css'));
  });
  app.use('/assets', express.static(assetsDir, { ...noCache, index: false }));
  for (const file of SDK_MODULES) {
    app.get(`/sdk/${file}`, (_req, res) => {
      res.setHeader('cache-control', 'no-cache');
      res.type('text/javascript').sendFile(join(sdkDir, file));
    });
  }
  app.get('/vendor/mqtt.esm.js', (_req, res) => {
    res.setHeader('cache-control', 'public, max-age=3600');
    res.type('text/javascript').sendFile(mqttBundle);
  });
  for (const [path, file] of Object.entries({ ...XTERM_FILES, ...UPLOT_FILES })) {
    const resolved = require.resolve(file);
    app.get(path, (_req, res) => {
      res.setHeader('cache-control', 'public, max-age=3600');
      res.type(path.endsWith('.css') ? 'text/css' : 'text/javascript').sendFile(resolved);
    });
  }
}
