import { join } from 'node:path';
import { repoRoot } from './binaries.ts';

/** The project's container image (Dockerfile); the chart and the examples name it. */
export const AGENTFLOW_IMAGE = 'ghcr.io/agentflow/agentflow';

/**
 * The image as the process kubelet runs it: this checkout's `agentflow` command, started in the
 * checkout (the image's working directory is the project), so the chart and the examples work
 * unchanged on the local control plane.
 */
export function localImages(): Record<string, { entrypoint: string[]; workingDir: string }> {
  return {
    [AGENTFLOW_IMAGE]: { entrypoint: [process.execPath, join(repoRoot, 'src/cli/main.ts')], workingDir: repoRoot },
  };
}
