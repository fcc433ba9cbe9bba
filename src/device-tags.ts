/**
 * Tags a device declares itself (`hypha --tag`): it publishes `{"tags":[…]}` on its
 * `P/devices/{id}/telemetry/tags` after each connect (docs/protocol.md "Device tags"). The hub
 * keeps them beside the tags an admin assigned, and selectors match both. A malformed
 * declaration is logged with its code and changes nothing.
 */
import type { Logger } from './log.js';
import type { Presence } from './presence.js';
import { parsePayload } from './protocol/schemas.js';
import { DeclaredTagsSchema } from './protocol/tags.js';
import type { DeviceStore } from './store/devices.js';

export function declaredTagsListener(devices: DeviceStore, presence: Presence, log: Logger): (device: string, payload: Buffer | string) => void {
  return (device, payload) => {
    const checked = parsePayload(DeclaredTagsSchema, payload);
    if (!checked.ok) {
      log.warn({ device, code: 'BAD_REQUEST', field: checked.field }, `declared tags ignored: ${checked.message}`);
      return;
    }
    try {
      if (!devices.setDeclaredTags(device, checked.value.tags)) return;
      const tags = devices.get(device)?.tags ?? checked.value.tags;
      presence.setTags(device, tags);
      log.info({ device, declared: checked.value.tags }, 'device declared its tags');
    } catch (error) {
      log.error({ device, err: error }, 'cannot save the tags the device declared');
    }
  };
}
