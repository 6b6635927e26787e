/** metav1.Time's format: RFC 3339 in UTC with whole seconds (what Kubernetes status fields carry). */
export function rfc3339(at: Date | number = new Date()): string {
  return new Date(at).toISOString().replace(/\.\d+Z$/, 'Z');
}
