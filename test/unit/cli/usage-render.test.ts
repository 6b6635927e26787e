import { describe, expect, it } from 'vitest';
import type { Workflow } from '../../../src/api/workflow.ts';
import { summaryLines, usageText } from '../../../src/cli/user/render.ts';

const wf = (spec: Partial<Workflow['spec']>, status: Workflow['status']): Workflow => ({
  apiVersion: 'agentflow.io/v1alpha1',
  kind: 'Workflow',
  metadata: { name: 'w', namespace: 'n' },
  spec: { pool: 'p', tasks: [{ name: 't', handler: 'h' }], ...spec },
  status,
});

const usage = {
  inputTokens: 10_000,
  outputTokens: 2_345,
  costUsd: 1.5,
  byModel: [
    { model: 'big', inputTokens: 9_000, outputTokens: 2_000, costUsd: 1.25 },
    { model: 'small', inputTokens: 1_000, outputTokens: 345, costUsd: 0.25 },
  ],
};

describe('usage in get and describe', () => {
  it('shows the totals and the costliest models', () => {
    expect(usageText(wf({}, { usage }))).toBe(
      '12,345 tokens (10,000 in, 2,345 out), $1.50; big 11,000 tokens $1.25, small 1,345 tokens $0.25',
    );
    expect(usageText(wf({}, {}))).toBe('');
  });

  it('shows the budget, and what passed it while it is exceeded', () => {
    const lines = summaryLines(
      wf(
        { budget: { maxTokens: 10_000, action: 'Suspend' } },
        {
          phase: 'Suspended',
          usage,
          conditions: [
            {
              type: 'BudgetExceeded',
              status: 'True',
              reason: 'MaxTokens',
              message: 'used 12,345 tokens of a budget of 10,000 (spec.budget.maxTokens)',
              lastTransitionTime: '2025-01-01T00:00:00Z',
            },
          ],
        },
      ),
      { now: Date.UTC(2025, 0, 1) },
    );
    expect(lines).toContain(
      'Usage:      12,345 tokens (10,000 in, 2,345 out), $1.50; big 11,000 tokens $1.25, small 1,345 tokens $0.25',
    );
    expect(lines).toContain(
      'Budget:     max 10,000 tokens (Suspend) exceeded: used 12,345 tokens of a budget of 10,000 (spec.budget.maxTokens)',
    );
    expect(summaryLines(wf({}, {}), { now: 0 }).some((l) => l.startsWith('Budget'))).toBe(false);
  });
});
