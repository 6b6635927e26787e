// Handlers for the research example (deploy/examples/workflow-research.yaml):
// plan -> research (one task per question) -> write. A stand-in for real
// model calls: deterministic, fast, and honest about its inputs, so the
// example's outputs can be checked.

/** Splits a topic into `count` questions. */
export async function plan(ctx) {
  const { topic, count } = ctx.input ?? {};
  if (typeof topic !== 'string' || topic === '') throw new TypeError('input.topic must be a non-empty string');
  const n = Number.isInteger(count) && count > 0 ? count : 3;
  const angles = ['what it is', 'why it matters', 'how it fails', 'how it scales', 'what it costs'];
  ctx.progress(1, `planned ${n} questions`);
  return {
    questions: Array.from(
      { length: n },
      (_, i) => `${topic}: ${angles[i % angles.length]}${i >= angles.length ? ` (${i + 1})` : ''}`,
    ),
  };
}

/** "Researches" one question; remembers how many it answered in the workflow's shared state. */
export async function research(ctx) {
  const { question, context } = ctx.input ?? {};
  if (typeof question !== 'string') throw new TypeError('input.question must be a string');
  await new Promise((r) => setTimeout(r, 20));
  for (;;) {
    const seen = await ctx.state.get('answered');
    try {
      await ctx.state.cas('answered', (seen?.value ?? 0) + 1, seen?.modRevision ?? 0);
      break;
    } catch (err) {
      if (err?.name !== 'ConflictError') throw err;
    }
  }
  return { question, summary: `${question} — notes (${context ?? 'no context'})`, words: question.split(/\s+/).length };
}

/** Writes the report from the findings. */
export async function write(ctx) {
  const { title, findings, outline } = ctx.input ?? {};
  if (!Array.isArray(findings)) throw new TypeError('input.findings must be a list');
  const answered = await ctx.state.get('answered');
  return {
    title,
    sections: findings.map((f, i) => ({ heading: outline?.[i] ?? f.question, body: f.summary })),
    answered: answered?.value ?? 0,
  };
}

// The review example (deploy/examples/workflow-review.yaml): draft -> review (a person) -> publish.

/**
 * "Writes" a short text on a topic, streaming it word by word as a model streams tokens, and
 * reports what the stand-in model would have cost.
 */
export async function draft(ctx) {
  const { topic, words } = ctx.input ?? {};
  if (typeof topic !== 'string' || topic === '') throw new TypeError('input.topic must be a non-empty string');
  const n = Number.isInteger(words) && words > 0 ? Math.min(words, 500) : 40;
  const vocabulary = [
    'agents',
    'stay',
    'warm',
    'so',
    'tasks',
    'start',
    'in',
    'milliseconds',
    'and',
    'no',
    'result',
    'is',
    'lost',
  ];
  const out = [];
  for (let i = 0; i < n; i++) {
    const word = i === 0 ? topic : vocabulary[i % vocabulary.length];
    out.push(word);
    ctx.stream(`${i === 0 ? '' : ' '}${word}`);
    await new Promise((r) => setTimeout(r, 15));
  }
  const text = `${out.join(' ')}.`;
  ctx.stream('.\n');
  const inputTokens = 12 + topic.length;
  ctx.usage({ model: 'stand-in-small', inputTokens, outputTokens: n, costUsd: (inputTokens + n) * 0.000002 });
  return { title: `Notes on ${topic}`, text, words: n };
}

/** "Publishes" the approved text. */
export async function publish(ctx) {
  const { title, text, approvedBy } = ctx.input ?? {};
  if (typeof text !== 'string') throw new TypeError('input.text must be a string');
  ctx.log('publishing', { title, approvedBy });
  return { published: title, approvedBy, characters: text.length };
}
