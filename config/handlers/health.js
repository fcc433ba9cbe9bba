/**
 * Health: every `intervalSeconds` runs `command` on every online device and publishes a
 * summary (retained) on rhizosphere/handlers/health/summary; the last one is also at
 * GET /handlers/health/.
 *
 * Options: { "intervalSeconds": 60, "command": "uptime", "timeoutMs": 10000 }
 */

/** @type {import('rhizosphere').Handler<{ intervalSeconds?: number, command?: string, timeoutMs?: number }>} */
export default {
  name: 'health',
  start(ctx) {
    const { intervalSeconds = 60, command = 'uptime', timeoutMs = 10_000 } = ctx.options ?? {};
    let last = null;

    const check = async () => {
      const devices = ctx.devices.online().map((device) => device.id);
      const outcomes = await Promise.allSettled(devices.map((id) => ctx.exec(id, { cmd_str: command, timeout_ms: timeoutMs })));
      const results = {};
      outcomes.forEach((outcome, i) => {
        results[devices[i]] =
          outcome.status === 'fulfilled'
            ? { ok: outcome.value.exit_code === 0, exit_code: outcome.value.exit_code, output: outcome.value.result.trim().slice(0, 200) }
            : { ok: false, code: outcome.reason?.code ?? 'INTERNAL', error: String(outcome.reason?.message ?? outcome.reason) };
      });
      const healthy = Object.values(results).filter((r) => r.ok).length;
      last = { at: new Date().toISOString(), command, online: devices.length, healthy, unhealthy: devices.length - healthy, devices: results };
      if (ctx.signal.aborted) return;
      await ctx.publish('summary', last, { retain: true });
      ctx.log.info({ online: devices.length, healthy }, 'health check done');
    };

    ctx.setInterval(check, intervalSeconds * 1000);
    ctx.router.get('/', (_req, res) => res.json(last ?? { at: null, note: `first check after ${intervalSeconds} s` }));
  },
};
