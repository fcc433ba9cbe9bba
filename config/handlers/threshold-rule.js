/**
 * A rule: when a device's telemetry on `topic` (rhizosphere/devices/ID/telemetry/TOPIC)
 * goes over `above`, runs `command` on that device; at most once per `cooldownSeconds`
 * per device. The value is the payload itself (a number), or its JSON field `field`.
 * What the rule did is published on rhizosphere/handlers/NAME/fired.
 *
 * Options: { "topic": "temp", "field": "value", "above": 80, "command": "systemctl restart fan", "cooldownSeconds": 60 }
 */

/** @type {import('rhizosphere').Handler<{ topic: string, field?: string, above: number, command: string, cooldownSeconds?: number }>} */
export default {
  name: 'threshold-rule',
  start(ctx) {
    const { topic, field, above, command, cooldownSeconds = 60 } = ctx.options ?? {};
    if (typeof topic !== 'string' || typeof above !== 'number' || typeof command !== 'string') {
      throw new Error('options need "topic" (a telemetry sub-topic), "above" (a number) and "command"');
    }
    const lastFired = new Map();

    ctx.on('telemetry', async (message) => {
      if (message.subtopic !== topic) return;
      const raw = field !== undefined && message.json !== null && typeof message.json === 'object' ? message.json[field] : message.json;
      const value = typeof raw === 'number' ? raw : Number(raw);
      if (!Number.isFinite(value) || value <= above) return;
      const now = Date.now();
      if (now - (lastFired.get(message.device) ?? -Infinity) < cooldownSeconds * 1000) return;
      lastFired.set(message.device, now);
      ctx.log.info({ device: message.device, value, above }, 'threshold crossed; running the command');
      const result = await ctx.exec(message.device, command);
      await ctx.publish('fired', { device: message.device, value, above, command, exit_code: result.exit_code, output: result.result.trim(), at: new Date().toISOString() });
    });
  },
};
