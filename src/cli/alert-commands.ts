/**
 * `rhizosphere alert list|resolve` and `rhizosphere alert rule add|list|remove`: alerts and
 * their rules over the SDK (docs/protocol.md "Alerts and webhooks"). The hub checks the rules
 * (an unknown kind, negative minutes, …) and answers with a coded error, printed as
 * `rhizosphere: BAD_REQUEST: …` (exit 1). Webhooks carry a secret: they are managed over REST
 * or in the console by admins, not here.
 */
import type { AlertRuleSpec, AlertRuleView, AlertState, AlertView, HubClient, JobAlertState } from '../client/index.js';

export class AlertUsageError extends Error {}

interface Io {
  out: (text: string) => void;
}

export interface AlertFlags {
  kind?: string;
  name?: string;
  tag?: string[];
  minutes?: string;
  metric?: string;
  above?: string;
  below?: string;
  states?: string;
  state?: string;
  json?: boolean;
}

export const ALERT_USAGE = `  rhizosphere alert list --url URL [--state firing|resolved] [--json]
                                             alerts: firing ones first, then recently resolved
  rhizosphere alert resolve --url URL ALERT  resolve a job alert (others resolve by themselves)
  rhizosphere alert rule add --url URL --kind device_offline --minutes N [--tag T...] [--name N]
  rhizosphere alert rule add --url URL --kind telemetry --metric M (--above V | --below V)
        --minutes N [--tag T...] [--name N]  M: load1, temp_c, mem_available_ratio, disk_free_ratio, …
  rhizosphere alert rule add --url URL --kind job [--states aborted,failed,timed_out] [--name N]
  rhizosphere alert rule list|remove --url URL [RULE] [--json]`;

/** A number as given; text that is not one goes to the hub as it is, which names the problem. */
const numberOr = (text: string): number | string => (text.trim() !== '' && Number.isFinite(Number(text)) ? Number(text) : text);

/** Checks the words before connecting; returns what to run once connected. */
export function alertCommand(positionals: readonly string[], flags: AlertFlags): (hub: HubClient, io: Io) => Promise<number> {
  const [action, ...rest] = positionals;
  if (action === 'list' && rest.length === 0) {
    if (flags.state !== undefined && flags.state !== 'firing' && flags.state !== 'resolved') throw new AlertUsageError(`alert list: --state must be firing or resolved, not "${flags.state}"`);
    return async (hub, io) => {
      const alerts = await hub.alerts.list(flags.state ? { state: flags.state as AlertState } : {});
      if (flags.json) io.out(`${JSON.stringify({ alerts })}\n`);
      else io.out(table(['ID', 'STATE', 'KIND', 'SUBJECT', 'FIRED', 'RESOLVED', 'SUMMARY'], alerts.map(alertRow)));
      return 0;
    };
  }
  if (action === 'resolve' && rest.length === 1) {
    const id = rest[0]!;
    return async (hub, io) => {
      const alert = await hub.alerts.resolve(id);
      io.out(`${alert.id} ${alert.state}${alert.resolution ? `: ${alert.resolution}` : ''}\n`);
      return 0;
    };
  }
  if (action === 'rule') {
    const [what, ...words] = rest;
    if (what === 'add' && words.length === 0) {
      const spec = ruleSpec(flags);
      return async (hub, io) => {
        const rule = await hub.alerts.addRule(spec);
        io.out(`${rule.id} ${describeRule(rule)}\n`);
        return 0;
      };
    }
    if (what === 'list' && words.length === 0) {
      return async (hub, io) => {
        const rules = await hub.alerts.rules();
        if (flags.json) io.out(`${JSON.stringify({ rules })}\n`);
        else io.out(table(['ID', 'NAME', 'KIND', 'CONDITION', 'ENABLED', 'FIRING'], rules.map((r) => [r.id, r.name ?? '-', r.kind, describeRule(r), r.enabled ? 'yes' : 'no', String(r.firing)])));
        return 0;
      };
    }
    if (what === 'remove' && words.length === 1) {
      const id = words[0]!;
      return async (hub, io) => {
        await hub.alerts.removeRule(id);
        io.out(`${id} removed\n`);
        return 0;
      };
    }
  }
  throw new AlertUsageError('alert: rhizosphere alert list|resolve, or rhizosphere alert rule add|list|remove --url URL … (see rhizosphere --help)');
}

function ruleSpec(flags: AlertFlags): AlertRuleSpec {
  if (!flags.kind) throw new AlertUsageError('alert rule add: --kind is required (device_offline, telemetry or job)');
  if (flags.above !== undefined && flags.below !== undefined) throw new AlertUsageError('alert rule add: give --above V or --below V, not both');
  const spec: Record<string, unknown> = { kind: flags.kind };
  if (flags.name !== undefined) spec.name = flags.name;
  if (flags.tag) spec.tags = flags.tag;
  if (flags.minutes !== undefined) spec.minutes = numberOr(flags.minutes);
  if (flags.metric !== undefined) spec.metric = flags.metric;
  if (flags.above !== undefined) Object.assign(spec, { op: 'above', value: numberOr(flags.above) });
  if (flags.below !== undefined) Object.assign(spec, { op: 'below', value: numberOr(flags.below) });
  if (flags.states !== undefined) spec.states = flags.states.split(',').map((s) => s.trim()).filter(Boolean) as JobAlertState[];
  return spec as unknown as AlertRuleSpec;
}

/** A rule's condition in words: "offline > 5 min [kitchen]", "temp_c above 70 for 5 min", "job aborted, failed". */
export function describeRule(rule: AlertRuleView): string {
  const tags = rule.tags && rule.tags.length > 0 ? ` [${rule.tags.join(',')}]` : '';
  if (rule.kind === 'device_offline') return `offline > ${rule.minutes} min${tags}`;
  if (rule.kind === 'telemetry') return `${rule.metric} ${rule.op} ${rule.value}${rule.minutes ? ` for ${rule.minutes} min` : ''}${tags}`;
  return `job ${(rule.states ?? []).join(', ')}`;
}

function alertRow(alert: AlertView): string[] {
  return [alert.id, alert.state, alert.kind, alert.subject, alert.fired_at, alert.resolved_at ?? '-', alert.summary];
}

function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].map((l) => `${l}\n`).join('');
}
