// Hand-written SVG charts (no chart dependency): horizontal bars for
// throughput-like figures and a log-scale percentile chart for latencies.
// A chart is a list of panels stacked vertically in one document.

export const COLORS: Record<string, string> = {
  agentflow: '#0f766e',
  'agentflow-plaintext': '#5eada4',
  'bullmq-everysec': '#ea580c',
  'bullmq-always': '#b91c1c',
};
const PALETTE = ['#0f766e', '#ea580c', '#b91c1c', '#2563eb', '#7c3aed', '#ca8a04'];
export const colorFor = (key: string, i = 0): string => COLORS[key] ?? PALETTE[i % PALETTE.length] ?? '#333';

const WIDTH = 760;
const FONT = 'font-family="system-ui, -apple-system, Segoe UI, sans-serif"';

export interface Panel {
  height: number;
  /** SVG elements, drawn with the panel's top at y = 0. */
  body: string;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const text = (x: number, y: number, s: string, attrs = '') =>
  `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attrs}>${esc(s)}</text>`;
export const fmt = (v: number): string =>
  !Number.isFinite(v)
    ? 'n/a'
    : v >= 100
      ? Math.round(v).toLocaleString('en-US')
      : v >= 10
        ? v.toFixed(1)
        : v.toFixed(2);

/** The whole document: a title and the panels one under another. */
export function svgDocument(title: string, subtitle: string, panels: Panel[]): string {
  let y = 58;
  const parts: string[] = [];
  for (const p of panels) {
    parts.push(`<g transform="translate(0 ${y})">${p.body}</g>`);
    y += p.height + 16;
  }
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${y}" viewBox="0 0 ${WIDTH} ${y}" ${FONT}>`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    text(20, 28, title, 'font-size="18" font-weight="600" fill="#111"'),
    text(20, 47, subtitle, 'font-size="11" fill="#555"'),
    ...parts,
    '</svg>',
    '',
  ].join('\n');
}

export interface Bar {
  label: string;
  value: number;
  /** Colour key (system key) or a colour. */
  color: string;
  /** Shown after the value, e.g. "x1.4" or "+/- 3%". */
  note?: string;
}

/** Horizontal bars on a linear scale from 0. */
export function barPanel(title: string, unit: string, bars: Bar[]): Panel {
  const rowH = 30;
  const left = 230;
  const right = WIDTH - 210;
  const max = Math.max(...bars.map((b) => (Number.isFinite(b.value) ? b.value : 0)), 1e-9);
  const out = [text(20, 14, `${title} (${unit})`, 'font-size="13" font-weight="600" fill="#222"')];
  bars.forEach((b, i) => {
    const y = 26 + i * rowH;
    const w = Number.isFinite(b.value) ? ((right - left) * b.value) / max : 0;
    const fill = b.color.startsWith('#') ? b.color : colorFor(b.color, i);
    out.push(text(left - 8, y + 15, b.label, 'font-size="12" text-anchor="end" fill="#222"'));
    out.push(`<rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${rowH - 8}" rx="3" fill="${fill}"/>`);
    const note = b.note ? `<tspan dx="6" fill="#666" font-size="11">(${esc(b.note)})</tspan>` : '';
    out.push(
      `<text x="${(left + w + 6).toFixed(1)}" y="${y + 15}" font-size="12" fill="#222">${esc(fmt(b.value))}${note}</text>`,
    );
  });
  return { height: 26 + bars.length * rowH, body: out.join('\n') };
}

export interface Series {
  label: string;
  color: string;
  /** One value per x label (NaN: no point). */
  values: number[];
}

/** Lines over categorical x (percentiles), log-scale y: latencies spanning decades stay readable. */
export function percentilePanel(title: string, unit: string, xLabels: string[], series: Series[]): Panel {
  const top = 28;
  const plotH = 200;
  const left = 70;
  const right = WIDTH - 200;
  const all = series.flatMap((s) => s.values).filter((v) => Number.isFinite(v) && v > 0);
  const lo = 10 ** Math.floor(Math.log10(Math.min(...all, 1)));
  const hi = 10 ** Math.ceil(Math.log10(Math.max(...all, 1) * 1.01));
  const y = (v: number) => top + plotH - (plotH * Math.log10(v / lo)) / Math.log10(hi / lo);
  const x = (i: number) => left + ((right - left) * (i + 0.5)) / xLabels.length;
  const out = [text(20, 14, `${title} (${unit}, log scale)`, 'font-size="13" font-weight="600" fill="#222"')];
  for (let d = lo; d <= hi * 1.0001; d *= 10) {
    out.push(`<line x1="${left}" x2="${right}" y1="${y(d).toFixed(1)}" y2="${y(d).toFixed(1)}" stroke="#ddd"/>`);
    out.push(
      text(
        left - 6,
        y(d) + 4,
        d >= 1 ? Math.round(d).toLocaleString('en-US') : String(Number(d.toPrecision(1))),
        'font-size="11" text-anchor="end" fill="#555"',
      ),
    );
  }
  xLabels.forEach((l, i) => {
    out.push(text(x(i), top + plotH + 16, l, 'font-size="11" text-anchor="middle" fill="#333"'));
  });
  series.forEach((s, si) => {
    const fill = s.color.startsWith('#') ? s.color : colorFor(s.color, si);
    const pts = s.values
      .map((v, i) => (Number.isFinite(v) && v > 0 ? `${x(i).toFixed(1)},${y(v).toFixed(1)}` : ''))
      .filter(Boolean);
    out.push(`<polyline points="${pts.join(' ')}" fill="none" stroke="${fill}" stroke-width="2"/>`);
    for (const p of pts) {
      const [px, py] = p.split(',');
      out.push(`<circle cx="${px}" cy="${py}" r="3.5" fill="${fill}"/>`);
    }
    const ly = top + 10 + si * 34;
    out.push(`<rect x="${right + 16}" y="${ly - 9}" width="12" height="12" rx="2" fill="${fill}"/>`);
    out.push(text(right + 34, ly + 1, s.label, 'font-size="11" fill="#222"'));
    const p50 = s.values[0] ?? Number.NaN;
    const last = s.values[s.values.length - 2] ?? Number.NaN;
    out.push(
      text(
        right + 34,
        ly + 15,
        `${xLabels[0]} ${fmt(p50)} · ${xLabels[xLabels.length - 2]} ${fmt(last)}`,
        'font-size="10" fill="#555"',
      ),
    );
  });
  return { height: top + plotH + 24, body: out.join('\n') };
}
