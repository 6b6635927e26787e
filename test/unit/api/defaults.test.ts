import { describe, expect, it } from 'vitest';
import { AgentPoolSchema } from '../../../src/api/agentpool.ts';
import { CronWorkflowSchema } from '../../../src/api/cron-workflow.ts';
import { WorkflowSchema } from '../../../src/api/workflow.ts';
import { WorkflowTemplateSchema } from '../../../src/api/workflow-template.ts';

// kubectl explain prints a field's description, not its `default:` (see
// test/integration/api/explain.test.ts): each default must be said in words.

type Node = { default?: unknown; description?: string; properties?: Record<string, Node>; items?: Node };

function defaulted(node: Node, path: string, out: [string, unknown, string | undefined][]) {
  if (node.default !== undefined) out.push([path, node.default, node.description]);
  for (const [k, v] of Object.entries(node.properties ?? {})) defaulted(v, `${path}.${k}`, out);
  if (node.items) defaulted(node.items, `${path}[]`, out);
  return out;
}

describe('every default is in its description', () => {
  const fields = [
    ...defaulted(WorkflowSchema as Node, 'workflow', []),
    ...defaulted(AgentPoolSchema as Node, 'agentpool', []),
    ...defaulted(WorkflowTemplateSchema as Node, 'workflowtemplate', []),
    ...defaulted(CronWorkflowSchema as Node, 'cronworkflow', []),
  ];

  it('finds the defaulted fields', () => {
    expect(fields.map(([path]) => path)).toEqual(
      expect.arrayContaining([
        'workflow.spec.retryPolicy.maxAttempts',
        'agentpool.spec.agent.capacity',
        'workflowtemplate.spec.parameters[].type',
        'cronworkflow.spec.concurrencyPolicy',
        'cronworkflow.spec.workflowSpec.retryPolicy.maxAttempts',
      ]),
    );
  });

  it.each(fields)('%s', (_path, value, description) => {
    expect(description).toMatch(new RegExp(`Default: ${String(value)}\\.$`));
  });
});
