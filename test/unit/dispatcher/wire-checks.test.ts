import { describe, expect, it } from 'vitest';
import {
  checkMailPayload,
  checkRegister,
  claimOf,
  isRefusal,
  MAX_CAPACITY,
  MAX_ERROR_MESSAGE,
  MAX_HANDLERS,
  MAX_IN_FLIGHT,
  parseResult,
  refOf,
  spawnedChildren,
} from '../../../src/dispatcher/wire-checks.ts';
import type { ChildTask__Output } from '../../../src/gen/agentflow/v1/ChildTask.ts';
import type { InFlight__Output } from '../../../src/gen/agentflow/v1/InFlight.ts';
import type { Register__Output } from '../../../src/gen/agentflow/v1/Register.ts';
import type { Result__Output } from '../../../src/gen/agentflow/v1/Result.ts';
import type { SpawnTasks__Output } from '../../../src/gen/agentflow/v1/SpawnTasks.ts';
import { MAX_PAYLOAD_BYTES } from '../../../src/lib/proto.ts';

// What the dispatcher checks in an agent's messages before anything changes because of them: each
// refusal names the field and the problem, and sizes are counted in UTF-8 bytes, not characters.

const register = (o: Partial<Register__Output> = {}): Register__Output => ({
  namespace: 'research',
  pool: 'agents',
  agentId: 'agent-0',
  pod: 'agents-0',
  handlers: ['summarise'],
  capacity: 4,
  leaseId: '7587861287354152481',
  inFlight: [],
  runtimeVersion: '1',
  protocol: 0,
  ...o,
});

const inFlight = (n: number): InFlight__Output[] =>
  Array.from({ length: n }, (_, i) => ({ taskId: `wf/t${i}`, attempt: 1, token: i + 1, cost: 1 }));

describe('checkRegister', () => {
  it('accepts a well-formed Register, and empty namespace, pool, agentId and leaseId', () => {
    expect(checkRegister(register())).toBeUndefined();
    expect(checkRegister(register({ namespace: '', pool: '', agentId: '', leaseId: '' }))).toBeUndefined();
    expect(
      checkRegister(
        register({
          namespace: 'a'.repeat(63),
          agentId: 'x'.repeat(253),
          capacity: MAX_CAPACITY,
          handlers: Array.from({ length: MAX_HANDLERS }, (_, i) => `h${i}`),
          inFlight: inFlight(MAX_IN_FLIGHT),
          leaseId: '1',
        }),
      ),
    ).toBeUndefined();
  });

  it.each<{ bad: Partial<Register__Output>; message: string }>([
    { bad: { namespace: 'Research' }, message: 'Register.namespace: "Research" is not a DNS-1123 label' },
    { bad: { namespace: 'a'.repeat(64) }, message: `Register.namespace: "${'a'.repeat(64)}" is not a DNS-1123 label` },
    { bad: { namespace: '-ns' }, message: 'Register.namespace: "-ns" is not a DNS-1123 label' },
    { bad: { pool: 'my_pool' }, message: 'Register.pool: "my_pool" is not a DNS-1123 label' },
    { bad: { pool: 'p'.repeat(64) }, message: `Register.pool: "${'p'.repeat(64)}" is not a DNS-1123 label` },
    { bad: { agentId: 'a/b' }, message: 'Register.agentId: "a/b" must be at most 253 characters without "/"' },
    {
      bad: { agentId: 'y'.repeat(254) },
      message: `Register.agentId: "${'y'.repeat(64)}" must be at most 253 characters without "/"`,
    },
    { bad: { capacity: 0 }, message: `Register.capacity: must be 1-${MAX_CAPACITY}, got 0` },
    {
      bad: { capacity: MAX_CAPACITY + 1 },
      message: `Register.capacity: must be 1-${MAX_CAPACITY}, got ${MAX_CAPACITY + 1}`,
    },
    { bad: { capacity: 1.5 }, message: `Register.capacity: must be 1-${MAX_CAPACITY}, got 1.5` },
    { bad: { leaseId: '0' }, message: 'Register.leaseId: "0" is not an etcd lease id' },
    { bad: { leaseId: '0123' }, message: 'Register.leaseId: "0123" is not an etcd lease id' },
    { bad: { leaseId: '12ab' }, message: 'Register.leaseId: "12ab" is not an etcd lease id' },
    { bad: { leaseId: '1'.repeat(21) }, message: `Register.leaseId: "${'1'.repeat(21)}" is not an etcd lease id` },
    { bad: { leaseId: '9'.repeat(40) }, message: `Register.leaseId: "${'9'.repeat(32)}" is not an etcd lease id` },
    { bad: { handlers: [] }, message: `Register.handlers: 1-${MAX_HANDLERS} handler names required, got 0` },
    {
      bad: { handlers: Array.from({ length: MAX_HANDLERS + 1 }, (_, i) => `h${i}`) },
      message: `Register.handlers: 1-${MAX_HANDLERS} handler names required, got ${MAX_HANDLERS + 1}`,
    },
    {
      bad: { inFlight: inFlight(MAX_IN_FLIGHT + 1) },
      message: `Register.inFlight: at most ${MAX_IN_FLIGHT} attempts, got ${MAX_IN_FLIGHT + 1}`,
    },
  ])('refuses: $message', ({ bad, message }) => {
    expect(checkRegister(register(bad))).toBe(message);
  });

  it('names the first bad field when several are bad', () => {
    expect(checkRegister(register({ pool: 'Bad', capacity: 0, handlers: [] }))).toBe(
      'Register.pool: "Bad" is not a DNS-1123 label',
    );
    expect(checkRegister(register({ capacity: 0, handlers: [] }))).toBe(
      `Register.capacity: must be 1-${MAX_CAPACITY}, got 0`,
    );
  });

  it('hands the authorizer exactly what the Register asks for', () => {
    expect(claimOf(register())).toEqual({
      namespace: 'research',
      pool: 'agents',
      agentId: 'agent-0',
      capacity: 4,
      handlers: ['summarise'],
    });
  });
});

const result = (o: Partial<Result__Output>): Result__Output => ({
  taskId: 'wf/t',
  attempt: 1,
  token: 9,
  usage: [],
  ...o,
});

describe('parseResult', () => {
  it('takes a handler’s approval wait as a retryable-failure record carrying the ask, and refuses a bad one naming the field', () => {
    const wait = { ordinal: 0, message: 'ok?', timeoutSeconds: 60, onTimeout: 'Approve', users: ['alice'], groups: [] };
    expect(parseResult(result({ outcome: 'awaitApproval', awaitApproval: wait }))).toEqual({
      ok: false,
      error: { message: 'waiting for approval 0', retryable: true },
      park: { ordinal: 0, message: 'ok?', timeoutSeconds: 60, onTimeout: 'Approve', approvers: { users: ['alice'] } },
    });
    const bad = (w: Partial<typeof wait>) =>
      parseResult(result({ outcome: 'awaitApproval', awaitApproval: { ...wait, ...w } }));
    expect(bad({ onTimeout: 'Escalate' })).toMatchObject({
      code: 'INVALID',
      message: expect.stringContaining('Result.awaitApproval.onTimeout'),
    });
    expect(bad({ ordinal: 64 })).toMatchObject({
      code: 'INVALID',
      message: expect.stringContaining('Result.awaitApproval.ordinal: must be 0-63'),
    });
    expect(bad({ message: 'm'.repeat(1025) })).toMatchObject({
      code: 'INVALID',
      message: expect.stringContaining('Result.awaitApproval.message'),
    });
    expect(bad({ timeoutSeconds: 2_592_001 })).toMatchObject({
      code: 'INVALID',
      message: expect.stringContaining('Result.awaitApproval.timeoutSeconds'),
    });
    expect(bad({ users: Array.from({ length: 65 }, (_, i) => `u${i}`) })).toMatchObject({
      code: 'INVALID',
      message: expect.stringContaining('Result.awaitApproval.approvers.users: at most 64'),
    });
  });

  it('parses an output, and reads an empty output as null', () => {
    expect(parseResult(result({ outcome: 'outputJson', outputJson: '{"n":[1,2]}' }))).toEqual({
      ok: true,
      output: { n: [1, 2] },
    });
    expect(parseResult(result({ outcome: 'outputJson', outputJson: '' }))).toEqual({ ok: true, output: null });
  });

  it('refuses an output that is not JSON', () => {
    expect(parseResult(result({ outcome: 'outputJson', outputJson: '{nope' }))).toEqual({
      code: 'INVALID',
      message: 'outputJson of wf/t is not JSON',
    });
  });

  it('keeps an error, cut to MAX_ERROR_MESSAGE characters', () => {
    expect(parseResult(result({ outcome: 'error', error: { message: 'boom', retryable: true, code: 'E1' } }))).toEqual({
      ok: false,
      error: { message: 'boom', retryable: true },
    });
    const long = parseResult(
      result({ outcome: 'error', error: { message: 'e'.repeat(MAX_ERROR_MESSAGE + 10), retryable: false, code: '' } }),
    );
    expect(long).toEqual({ ok: false, error: { message: 'e'.repeat(MAX_ERROR_MESSAGE), retryable: false } });
  });

  it('refuses a Result with neither outcome', () => {
    const neither = { code: 'INVALID', message: 'Result for wf/t has neither outputJson nor error' };
    expect(parseResult(result({}))).toEqual(neither);
    expect(parseResult(result({ outcome: 'error', error: null }))).toEqual(neither);
  });

  it('refuses an output over MAX_PAYLOAD_BYTES, and takes one of exactly that size', () => {
    const exact = `"${'a'.repeat(MAX_PAYLOAD_BYTES - 2)}"`;
    expect(parseResult(result({ outcome: 'outputJson', outputJson: exact }))).toMatchObject({ ok: true });
    expect(
      parseResult(result({ outcome: 'outputJson', outputJson: `"${'a'.repeat(MAX_PAYLOAD_BYTES - 1)}"` })),
    ).toEqual({ code: 'PAYLOAD_TOO_LARGE', message: `output of wf/t is over ${MAX_PAYLOAD_BYTES} bytes` });
  });

  it('counts bytes, not characters: 3-byte and 4-byte characters right at the limit', () => {
    // 1,398,100 "€" (3 bytes each) + 2 ASCII + 2 quotes = MAX_PAYLOAD_BYTES exactly, in far fewer characters.
    const euros = '€'.repeat(1_398_100);
    const atLimit = `"${euros}aa"`;
    expect(Buffer.byteLength(atLimit)).toBe(MAX_PAYLOAD_BYTES);
    expect(parseResult(result({ outcome: 'outputJson', outputJson: atLimit }))).toEqual({
      ok: true,
      output: `${euros}aa`,
    });
    expect(parseResult(result({ outcome: 'outputJson', outputJson: `"${euros}aaa"` }))).toMatchObject({
      code: 'PAYLOAD_TOO_LARGE',
    });
    // Emoji: 4 bytes in 2 UTF-16 units each.
    const n = MAX_PAYLOAD_BYTES / 4;
    expect(parseResult(result({ outcome: 'outputJson', outputJson: `"${'😀'.repeat(n - 1)}"` }))).toMatchObject({
      ok: true,
    });
    expect(parseResult(result({ outcome: 'outputJson', outputJson: `"${'😀'.repeat(n)}"` }))).toMatchObject({
      code: 'PAYLOAD_TOO_LARGE',
    });
    // Under a third of the limit in characters can never be over it in bytes.
    const third = Math.floor(MAX_PAYLOAD_BYTES / 3) - 2;
    expect(parseResult(result({ outcome: 'outputJson', outputJson: `"${'€'.repeat(third)}"` }))).toMatchObject({
      ok: true,
    });
  });
});

const child = (o: Partial<ChildTask__Output> = {}): ChildTask__Output => ({
  name: 'c1',
  handler: 'h',
  inputJson: '{"x":1}',
  cost: 2,
  ...o,
});
const spawn = (children: ChildTask__Output[]): SpawnTasks__Output => ({
  parentTaskId: 'wf/p',
  attempt: 1,
  token: 5,
  children,
  requestId: 1,
});

describe('spawnedChildren', () => {
  it('returns the children with inputs parsed, cost 0 read as 1 and empty input as null', () => {
    expect(spawnedChildren(spawn([child(), child({ name: 'c2', cost: 0, inputJson: '' })]))).toEqual([
      { name: 'c1', handler: 'h', input: { x: 1 }, cost: 2 },
      { name: 'c2', handler: 'h', input: null, cost: 1 },
    ]);
  });

  it.each<{ children: ChildTask__Output[]; code: string; message: string }>([
    { children: [], code: 'INVALID', message: 'SpawnTasks.children: at least one child required' },
    {
      children: [child({ name: 'Bad_Name' })],
      code: 'INVALID',
      message: 'SpawnTasks.children[0].name: "Bad_Name" is not a DNS-1123 label',
    },
    {
      children: [child(), child({ name: '' })],
      code: 'INVALID',
      message: 'SpawnTasks.children[1].name: "" is not a DNS-1123 label',
    },
    {
      children: [child({ name: 'n'.repeat(64) })],
      code: 'INVALID',
      message: `SpawnTasks.children[0].name: "${'n'.repeat(64)}" is not a DNS-1123 label`,
    },
    {
      children: [child({ name: 'a' }), child({ name: 'b' }), child({ name: 'a' })],
      code: 'INVALID',
      message: 'SpawnTasks.children[2].name: "a" repeats children[0]',
    },
    {
      children: [child({ handler: '' })],
      code: 'INVALID',
      message: 'SpawnTasks.children[0].handler: required, at most 253 characters',
    },
    {
      children: [child({ name: 'c2' }), child({ handler: 'h'.repeat(254) })],
      code: 'INVALID',
      message: 'SpawnTasks.children[1].handler: required, at most 253 characters',
    },
    {
      children: [child(), child({ name: 'c2', inputJson: `"${'€'.repeat(Math.ceil(MAX_PAYLOAD_BYTES / 3))}"` })],
      code: 'PAYLOAD_TOO_LARGE',
      message: `SpawnTasks.children[1].inputJson: over ${MAX_PAYLOAD_BYTES} bytes`,
    },
    { children: [child({ inputJson: '{' })], code: 'INVALID', message: 'SpawnTasks.children[0].inputJson: not JSON' },
  ])('refuses: $message', ({ children, code, message }) => {
    expect(spawnedChildren(spawn(children))).toEqual({ code, message });
  });

  it('takes a child handler of 253 characters and an input of exactly MAX_PAYLOAD_BYTES', () => {
    const got = spawnedChildren(
      spawn([child({ handler: 'h'.repeat(253), inputJson: `"${'a'.repeat(MAX_PAYLOAD_BYTES - 2)}"` })]),
    );
    expect(isRefusal(got)).toBe(false);
    expect((got as { handler: string }[])[0]?.handler).toBe('h'.repeat(253));
  });
});

describe('checkMailPayload', () => {
  it('takes a payload of exactly MAX_PAYLOAD_BYTES and refuses one byte more, counting UTF-8 bytes', () => {
    expect(checkMailPayload('a'.repeat(MAX_PAYLOAD_BYTES))).toBeUndefined();
    const refusal = { code: 'PAYLOAD_TOO_LARGE', message: `mail payload over ${MAX_PAYLOAD_BYTES} bytes` };
    expect(checkMailPayload('a'.repeat(MAX_PAYLOAD_BYTES + 1))).toEqual(refusal);
    expect(checkMailPayload(`${'€'.repeat(MAX_PAYLOAD_BYTES / 4)}`)).toBeUndefined(); // 3/4 of the limit
    expect(checkMailPayload(`${'€'.repeat(MAX_PAYLOAD_BYTES / 2)}`)).toEqual(refusal); // 1.5x, in half the characters
  });
});

describe('refOf', () => {
  it('reads workflow/task in the agent’s namespace', () => {
    expect(refOf('research', 'wf-1/task.3')).toEqual({ namespace: 'research', workflow: 'wf-1', task: 'task.3' });
  });

  it('reads namespace/workflow/task as a task of that namespace (a shared pool serving it)', () => {
    expect(refOf('research', 'team-a/wf-1/task.3')).toEqual({ namespace: 'team-a', workflow: 'wf-1', task: 'task.3' });
  });

  it.each(['', 'wf', 'wf/', '/task', 'a//c', 'a/b/', 'a/b/c/d'])('refuses "%s" as INVALID, quoting it', (id) => {
    expect(refOf('research', id)).toEqual({
      code: 'INVALID',
      message: `task id "${id}" is not workflow/task or namespace/workflow/task`,
    });
  });
});

describe('isRefusal', () => {
  it('tells a refusal from every value the checks answer otherwise', () => {
    expect(isRefusal({ code: 'INVALID', message: 'm' })).toBe(true);
    expect(isRefusal(refOf('ns', 'wf/t'))).toBe(false);
    expect(isRefusal(refOf('ns', 'bad'))).toBe(true);
    expect(isRefusal({ ok: false, error: { message: 'boom', retryable: false } })).toBe(false);
    expect(isRefusal({ ok: true, output: { code: 'x', message: 'y' } })).toBe(false);
    expect(isRefusal([{ name: 'c', handler: 'h', input: null, cost: 1 }])).toBe(false);
    expect(isRefusal({ code: 'x', message: 'y', spec: {} })).toBe(false);
    expect(isRefusal({ code: 'x' })).toBe(false);
    expect(isRefusal(null)).toBe(false);
    expect(isRefusal(undefined)).toBe(false);
    expect(isRefusal('INVALID')).toBe(false);
  });
});
