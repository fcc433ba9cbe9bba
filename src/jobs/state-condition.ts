/**
 * The `state` key of a job selector (docs/protocol.md "Fleet jobs", "Desired state"): devices
 * whose desired or reported state compares so. Two forms, one meaning:
 *
 *   "state.reported.fw != state.desired.fw and state.desired.fw != null"
 *   [{"left":{"path":"state.reported.fw"},"op":"!=","right":{"path":"state.desired.fw"}},
 *    {"left":{"path":"state.desired.fw"},"op":"!=","right":{"value":null}}]
 *
 * Comparisons (`==`, `!=`) joined by `and`, all of which must hold. An operand is a path into
 * one of the device's three documents (`state.desired…`, `state.reported…`, `state.delta…`,
 * then keys, or list indexes, separated by dots) or a JSON literal. A path the document does
 * not have is null. Values compare as JSON (objects whatever their key order). No code is run:
 * the text is read by the small parser below into the structured form, and only that is
 * evaluated.
 */
import { z } from 'zod';
import { jsonEqual, stateDelta, type JsonValue } from '../protocol/state.js';
import type { DeviceStateDocs } from '../store/device-state.js';

export const STATE_CONDITION_MAX_LENGTH = 4096;
export const STATE_CONDITION_MAX_COMPARISONS = 16;
const PATH_MAX_LEVELS = 10;
const DOCUMENTS = ['desired', 'reported', 'delta'] as const;
const SEGMENT = /^[A-Za-z0-9_-]{1,64}$/;

export type StateOperand = { path: string } | { value: JsonValue };
export interface StateComparison {
  left: StateOperand;
  op: '==' | '!=';
  right: StateOperand;
}
/** The text form or the structured one. */
export type StateCondition = string | StateComparison[];

/** Why a path is not one, or null. */
export function statePathProblem(path: string): string | null {
  const levels = path.split('.');
  if (levels[0] !== 'state' || !(DOCUMENTS as readonly string[]).includes(levels[1] ?? '')) return `path ${JSON.stringify(path.slice(0, 80))} must start with state.desired, state.reported or state.delta`;
  if (levels.length > PATH_MAX_LEVELS) return `path ${JSON.stringify(path.slice(0, 80))} has more than ${PATH_MAX_LEVELS} levels`;
  const bad = levels.slice(2).find((level) => !SEGMENT.test(level));
  if (bad !== undefined) return `path ${JSON.stringify(path.slice(0, 80))}: each key after state.${levels[1]} must be 1 to 64 of A-Z a-z 0-9 _ -`;
  return null;
}

class ConditionSyntaxError extends Error {}

type Token = { kind: 'op'; op: '==' | '!=' } | { kind: 'and' } | { kind: 'operand'; operand: StateOperand };

/** Reads the text form into comparisons; throws a ConditionSyntaxError that says where. */
function tokenize(text: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  const fail = (what: string): never => {
    throw new ConditionSyntaxError(`at character ${i + 1}: ${what}`);
  };
  while (i < text.length) {
    const rest = text.slice(i);
    const space = /^\s+/.exec(rest);
    if (space) {
      i += space[0].length;
      continue;
    }
    if (rest.startsWith('==') || rest.startsWith('!=')) {
      tokens.push({ kind: 'op', op: rest.startsWith('==') ? '==' : '!=' });
      i += 2;
      continue;
    }
    if (rest.startsWith('&&')) {
      tokens.push({ kind: 'and' });
      i += 2;
      continue;
    }
    if (rest[0] === '"') {
      // A JSON string: up to the first quote that no backslash escapes.
      const end = /^"(?:[^"\\\u0000-\u001f]|\\.)*"/.exec(rest);
      if (!end) fail('a string that does not end (strings are JSON: "…" with \\ escapes)');
      let value: string;
      try {
        value = JSON.parse(end![0]) as string;
      } catch {
        return fail(`${end![0].slice(0, 40)} is not a JSON string`);
      }
      tokens.push({ kind: 'operand', operand: { value } });
      i += end![0].length;
      continue;
    }
    const number = /^-?\d+(\.\d+)?([eE][+-]?\d+)?(?![A-Za-z0-9_.])/.exec(rest);
    if (number) {
      tokens.push({ kind: 'operand', operand: { value: Number(number[0]) } });
      i += number[0].length;
      continue;
    }
    const empty = /^(\{\s*\}|\[\s*\])/.exec(rest);
    if (empty) {
      tokens.push({ kind: 'operand', operand: { value: empty[0].startsWith('{') ? {} : [] } });
      i += empty[0].length;
      continue;
    }
    const word = /^[A-Za-z_][A-Za-z0-9_.-]*/.exec(rest);
    if (!word) fail(`unexpected ${JSON.stringify(rest[0])}`);
    const w = word![0];
    if (w === 'and' || w === 'AND') tokens.push({ kind: 'and' });
    else if (w === 'true' || w === 'false') tokens.push({ kind: 'operand', operand: { value: w === 'true' } });
    else if (w === 'null') tokens.push({ kind: 'operand', operand: { value: null } });
    else {
      const problem = statePathProblem(w);
      if (problem) fail(problem);
      tokens.push({ kind: 'operand', operand: { path: w } });
    }
    i += w.length;
  }
  return tokens;
}

/** The text form as comparisons; throws with a message that says what and where. */
export function parseStateCondition(text: string): StateComparison[] {
  if (text.length > STATE_CONDITION_MAX_LENGTH) throw new ConditionSyntaxError(`must be at most ${STATE_CONDITION_MAX_LENGTH} characters`);
  const tokens = tokenize(text);
  const comparisons: StateComparison[] = [];
  let at = 0;
  const describe = (token: Token | undefined) => (token === undefined ? 'the end' : token.kind === 'op' ? token.op : token.kind === 'and' ? 'and' : 'an operand');
  for (;;) {
    const [left, op, right] = [tokens[at], tokens[at + 1], tokens[at + 2]];
    if (left?.kind !== 'operand') throw new ConditionSyntaxError(`comparison ${comparisons.length + 1}: expected a path or a value, found ${describe(left)}`);
    if (op?.kind !== 'op') throw new ConditionSyntaxError(`comparison ${comparisons.length + 1}: expected == or !=, found ${describe(op)}`);
    if (right?.kind !== 'operand') throw new ConditionSyntaxError(`comparison ${comparisons.length + 1}: expected a path or a value after ${op.op}, found ${describe(right)}`);
    comparisons.push({ left: left.operand, op: op.op, right: right.operand });
    if (comparisons.length > STATE_CONDITION_MAX_COMPARISONS) throw new ConditionSyntaxError(`has more than ${STATE_CONDITION_MAX_COMPARISONS} comparisons`);
    at += 3;
    if (at === tokens.length) return comparisons;
    if (tokens[at]?.kind !== 'and') throw new ConditionSyntaxError(`after comparison ${comparisons.length}: expected and, found ${describe(tokens[at])}`);
    at++;
  }
}

/** Why a structured comparison is not one (naming where, as `left`, `op` or `right`), or null. */
function comparisonProblem(value: unknown): { path: (string | number)[]; message: string } | null {
  const shape = 'must be {"left":…,"op":"==" or "!=","right":…}';
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return { path: [], message: shape };
  const keys = Object.keys(value);
  const unknown = keys.find((key) => key !== 'left' && key !== 'op' && key !== 'right');
  if (unknown !== undefined) return { path: [], message: `has an unknown key ${JSON.stringify(unknown.slice(0, 40))} (${shape})` };
  const { left, op, right } = value as Record<string, unknown>;
  if (op !== '==' && op !== '!=') return { path: ['op'], message: 'must be "==" or "!="' };
  for (const [side, operand] of [['left', left], ['right', right]] as const) {
    const operandShape = 'must be {"path":"state.…"} or {"value":…}';
    if (operand === null || typeof operand !== 'object' || Array.isArray(operand)) return { path: [side], message: operandShape };
    const operandKeys = Object.keys(operand);
    if (operandKeys.length !== 1 || (operandKeys[0] !== 'path' && operandKeys[0] !== 'value')) return { path: [side], message: operandShape };
    const { path } = operand as { path?: unknown };
    if (operandKeys[0] === 'path') {
      if (typeof path !== 'string') return { path: [side, 'path'], message: 'must be a string like "state.reported.fw"' };
      const problem = statePathProblem(path);
      if (problem) return { path: [side, 'path'], message: problem };
    }
  }
  return null;
}

/**
 * Either form, checked: the text is parsed (its first problem said with where it is), each
 * structured comparison checked (its first problem named by its place, as `2.left.path`).
 */
export const StateConditionSchema = z.custom<StateCondition>().superRefine((value, ctx) => {
  const usage = 'must be a condition like "state.reported.fw != state.desired.fw", or a list of {"left","op","right"}';
  if (typeof value === 'string') {
    try {
      parseStateCondition(value);
    } catch (error) {
      if (!(error instanceof ConditionSyntaxError)) throw error;
      ctx.addIssue({ code: 'custom', message: error.message });
    }
    return;
  }
  if (!Array.isArray(value)) return void ctx.addIssue({ code: 'custom', message: usage });
  if (value.length === 0) return void ctx.addIssue({ code: 'custom', message: 'must have at least one comparison' });
  if (value.length > STATE_CONDITION_MAX_COMPARISONS) return void ctx.addIssue({ code: 'custom', message: `must have at most ${STATE_CONDITION_MAX_COMPARISONS} comparisons` });
  value.forEach((comparison, i) => {
    const problem = comparisonProblem(comparison);
    if (problem) ctx.addIssue({ code: 'custom', path: [i, ...problem.path], message: problem.message });
  });
});

const NO_DOCS: DeviceStateDocs = {
  desired: { version: 0, state: {}, updatedAt: null, updatedBy: null },
  reported: { version: 0, state: {}, updatedAt: null, error: null },
};

function lookUp(document: JsonValue, levels: readonly string[]): JsonValue {
  let current: JsonValue = document;
  for (const level of levels) {
    if (Array.isArray(current) && /^\d+$/.test(level)) current = current[Number(level)] ?? null;
    else if (current !== null && typeof current === 'object' && !Array.isArray(current) && Object.hasOwn(current, level)) current = current[level]!;
    else return null;
  }
  return current;
}

/** A checked condition as a test of one device's documents (none: every path is null). */
export function compileStateCondition(condition: StateCondition): (docs: DeviceStateDocs | undefined) => boolean {
  const comparisons = typeof condition === 'string' ? parseStateCondition(condition) : condition;
  return (docs = NO_DOCS) => {
    let delta: JsonValue | undefined;
    const resolve = (operand: StateOperand): JsonValue => {
      if ('value' in operand) return operand.value;
      const [, document, ...levels] = operand.path.split('.');
      if (document === 'delta') delta ??= stateDelta(docs.desired.state, docs.reported.state);
      const root = document === 'desired' ? docs.desired.state : document === 'reported' ? docs.reported.state : delta!;
      return lookUp(root, levels);
    };
    return comparisons.every(({ left, op, right }) => jsonEqual(resolve(left), resolve(right)) === (op === '=='));
  };
}
