/**
 * Inventory: when a device comes online, runs `uname -a` and `cat /etc/os-release` on it,
 * keeps the result in the handler's store and serves it at /handlers/inventory/ (every
 * device) and /handlers/inventory/ID (one).
 *
 * Options: { "timeoutMs": 10000 }
 */

/** @type {import('rhizosphere').Handler<{ timeoutMs?: number }>} */
export default {
  name: 'inventory',
  start(ctx) {
    const timeoutMs = ctx.options?.timeoutMs ?? 10_000;

    /** "KEY=value" lines, quotes removed. */
    const parseOsRelease = (text) =>
      Object.fromEntries(
        text
          .split('\n')
          .map((line) => line.match(/^([A-Z0-9_]+)=(.*)$/))
          .filter(Boolean)
          .map(([, key, value]) => [key, value.replace(/^"(.*)"$/, '$1')]),
      );

    const collect = async (id) => {
      const uname = await ctx.exec(id, { cmd_str: 'uname -a', timeout_ms: timeoutMs });
      const osRelease = await ctx.exec(id, { cmd_str: 'cat /etc/os-release', timeout_ms: timeoutMs });
      const entry = {
        device: id,
        collectedAt: new Date().toISOString(),
        uname: uname.result.trim(),
        osRelease: osRelease.exit_code === 0 ? parseOsRelease(osRelease.result) : null,
      };
      ctx.store.set(id, entry);
      ctx.log.info({ device: id }, 'inventory collected');
    };
    const collectLogged = (id) =>
      collect(id).catch((error) => ctx.log.warn({ device: id, code: error.code, err: error.message }, 'inventory not collected'));

    ctx.on('online', (device) => collectLogged(device.id));
    // Devices already online when the handler starts.
    for (const device of ctx.devices.online()) void collectLogged(device.id);

    ctx.router.get('/', (_req, res) => {
      res.json(ctx.store.keys().map((id) => ctx.store.get(id)));
    });
    ctx.router.get('/:id', (req, res) => {
      const entry = ctx.store.get(req.params.id);
      if (entry) res.json(entry);
      else res.status(404).json({ status: 'error', code: 'UNKNOWN_DEVICE', message: `no inventory for ${req.params.id} yet` });
    });
  },
};
