/**
 * Device tags (docs/protocol.md "Device tags"): the names selectors match. An admin assigns
 * some; a device may declare its own by publishing `{"tags":[…]}` on
 * `P/devices/{id}/telemetry/tags`.
 */
import { z } from 'zod';

const TAG_PATTERN = /^[A-Za-z0-9._:-]{1,64}$/;
/** At most this many tags per device, assigned or declared (each list on its own). */
export const MAX_DEVICE_TAGS = 64;

export function tagProblem(tag: string): string | null {
  return TAG_PATTERN.test(tag) ? null : `tag ${JSON.stringify(tag)} must be 1 to 64 of A-Z a-z 0-9 . _ : -`;
}

export const tagSchema = z.string({ error: 'must be a string' }).superRefine((value, ctx) => {
  const problem = tagProblem(value);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

/** What a device publishes on `telemetry/tags`. Other keys are ignored, for later versions. */
export const DeclaredTagsSchema = z.object(
  {
    tags: z
      .array(tagSchema, { error: 'must be a list of tags' })
      .max(MAX_DEVICE_TAGS, { error: `must have at most ${MAX_DEVICE_TAGS} tags` }),
  },
  { error: 'must be an object {"tags":[…]}' },
);
