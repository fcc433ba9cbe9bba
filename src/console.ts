/**
 * Serves the web console (web/, compiled to dist/web/ by the build) and the MQTT.js browser
 * bundle it connects with, from the hub's own HTTP port: no CDN, works without internet.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import express, { type Express } from 'express';
import { PACKAGE_ROOT } from './package-root.js';

const require = createRequire(import.meta.url);

export function mountConsole(app: Express): void {
  const webDir = join(PACKAGE_ROOT, 'web');
  const assetsDir = join(PACKAGE_ROOT, 'dist', 'web');
  if (!existsSync(join(assetsDir, 'main.js'))) {
    throw new Error(`the console is not built (${assetsDir} is missing): run npm run build`);
  }
  const mqttBundle = require.resolve('mqtt/dist/mqtt.esm');
  const noCache = { setHeaders: (res: express.Response) => res.setHeader('cache-control', 'no-cache') };

  app.get('/', (_req, res) => {
    res.setHeader('cache-control', 'no-cache');
    res.sendFile(join(webDir, 'index.html'));
  });
  app.get('/console.css', (_req, res) => {
    res.setHeader('cache-control', 'no-cache');
    res.sendFile(join(webDir, 'console.css'));
  });
  app.use('/assets', express.static(assetsDir, { ...noCache, index: false }));
  app.get('/vendor/mqtt.esm.js', (_req, res) => {
    res.setHeader('cache-control', 'public, max-age=3600');
    res.type('text/javascript').sendFile(mqttBundle);
  });
}
