import { defineConfig } from 'vitest/config';

// Three projects: unit tests run anywhere in milliseconds; integration and e2e
// tests run against the real local control plane started by the global setup
// (etcd, kube-apiserver, kube-controller-manager, kube-scheduler).
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          environment: 'node',
          // Some unit tests run a Node child (the CLI's entry points, a kubeconfig resolved in a child
          // process): ~1-2.5 s alone, past 5 s while the integration project loads both cores. Most
          // unit tests take milliseconds; 30 s still ends a hung one well inside the run.
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          environment: 'node',
          globalSetup: ['test/cluster/global-setup.ts'],
          pool: 'forks',
          testTimeout: 60_000,
          hookTimeout: 120_000,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          environment: 'node',
          globalSetup: ['test/cluster/global-setup.ts'],
          pool: 'forks',
          fileParallelism: false,
          testTimeout: 300_000,
          hookTimeout: 300_000,
        },
      },
    ],
  },
});
