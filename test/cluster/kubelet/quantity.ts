// Kubernetes resource quantities ("500m", "1.5Gi", "2k") for the kubelet's
// admission check. The operator's placer has its own, fully tested parser;
// this one only needs to compare requests with allocatable.

const SUFFIX: Record<string, number> = {
  n: 1e-9,
  u: 1e-6,
  m: 1e-3,
  '': 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

export function parseQuantity(q: string | number): number {
  if (typeof q === 'number') return q;
  const m = /^([+-]?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$/.exec(q.trim());
  if (!m?.[1]) throw new Error(`invalid quantity "${q}"`);
  return Number(m[1]) * (SUFFIX[m[2] ?? ''] ?? 1);
}
