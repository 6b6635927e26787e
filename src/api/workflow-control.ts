// How a user steers a Workflow that exists: annotations on the object, which the
// operator's workflow controller answers (src/operator/workflow/controller.ts) and
// the CLI sets (src/cli/user). Here, not in the controller, so that the CLI can
// read them without loading the workflow engine. Suspend and resume are
// spec.suspend, not an annotation.

/** Present: the run is cancelled (phase Cancelled, condition Failed reason Cancelled). */
export const CANCEL_ANNOTATION = 'agentflow.io/cancel';
/**
 * A new value (any string, e.g. a timestamp) asks a Failed or Cancelled run to
 * run its failed and cancelled tasks again, keeping what succeeded. The value
 * answered is status.lastRetry.token.
 */
export const RETRY_ANNOTATION = 'agentflow.io/retry';
/**
 * A new value asks for a copy of the workflow under a new name that runs from
 * scratch with the current spec (status.lastRerun names it; the copy carries
 * RERUN_OF_ANNOTATION).
 */
export const RERUN_ANNOTATION = 'agentflow.io/rerun';
export const RERUN_OF_ANNOTATION = 'agentflow.io/rerun-of';
