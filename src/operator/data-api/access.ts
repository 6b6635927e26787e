// May this user do this? Asked of the API server with a SubjectAccessReview
// against the agentflow.io resource the data belongs to (a Workflow, an
// AgentPool), so the Workflow's own RBAC is the one rule: who cannot
// `get workflows` in a namespace sees nothing of it. Answers are kept briefly,
// as kube-apiserver's delegated authorizer does (allowed 10 s, denied 10 s).

import { GROUP } from '../../api/crds.ts';
import type { KubeClient } from '../kube/client.ts';
import type { UserInfo } from './request-header.ts';

export interface Access {
  namespace: string;
  verb: 'get' | 'list' | 'watch' | 'update' | 'delete';
  resource: 'workflows' | 'agentpools';
  /** A subresource with RBAC of its own (workflows/approval, workflows/signal). */
  subresource?: 'approval' | 'signal';
  name?: string;
}

export interface Decision {
  allowed: boolean;
  /** What to tell the user when refused. */
  reason: string;
}

const TTL_MS = 10_000;
const MAX_ENTRIES = 10_000;

interface SarStatus {
  status?: { allowed?: boolean; denied?: boolean; reason?: string; evaluationError?: string };
}

export class AccessReviewer {
  private readonly client: KubeClient;
  private readonly cache = new Map<string, { decision: Decision; until: number }>();
  private readonly now: () => number;

  constructor(client: KubeClient, now: () => number = Date.now) {
    this.client = client;
    this.now = now;
  }

  async review(user: UserInfo, access: Access): Promise<Decision> {
    const key = JSON.stringify([user.username, user.uid, [...user.groups].sort(), user.extra, access]);
    const hit = this.cache.get(key);
    const now = this.now();
    if (hit && hit.until > now) return hit.decision;
    const res = await this.client.create<SarStatus>('/apis/authorization.k8s.io/v1/subjectaccessreviews', {
      apiVersion: 'authorization.k8s.io/v1',
      kind: 'SubjectAccessReview',
      spec: {
        user: user.username,
        ...(user.uid && { uid: user.uid }),
        groups: user.groups,
        ...(Object.keys(user.extra).length > 0 && { extra: user.extra }),
        resourceAttributes: {
          group: GROUP,
          resource: access.resource,
          namespace: access.namespace,
          verb: access.verb,
          ...(access.subresource && { subresource: access.subresource }),
          ...(access.name && { name: access.name }),
        },
      },
    });
    const allowed = res.status?.allowed === true;
    const resource = access.subresource ? `${access.resource}/${access.subresource}` : access.resource;
    const what = `${access.resource}.${GROUP}${access.name ? ` "${access.name}"` : ''}`;
    const decision: Decision = {
      allowed,
      reason: allowed
        ? ''
        : `${what} is forbidden: User "${user.username}" cannot ${access.verb} resource "${resource}" in API group "${GROUP}" in the namespace "${access.namespace}"${res.status?.reason ? `: ${res.status.reason}` : ''}`,
    };
    if (this.cache.size >= MAX_ENTRIES) this.cache.clear();
    this.cache.set(key, { decision, until: now + TTL_MS });
    return decision;
  }
}
