// A uPlot time-series chart that fits its container (and follows it when
// the window is resized), with a plain legend of the series.
import { html, useEffect, useRef } from '../lib.js';
import uPlot from '../vendor/uPlot-1.6.32.esm.js';

// Times on the x axis in UTC, as everywhere on the dashboard.
const hhmm = (t) => new Date(t * 1000).toISOString().slice(11, 16);

const COLORS = ['#0b57d0', '#b3261e', '#146c2e', '#8a4b00', '#6a1b9a', '#00696f'];

export function TimeChart({ title, xs, series, unit }) {
  const box = useRef(null);
  useEffect(() => {
    const el = box.current;
    if (!el) return undefined;
    const opts = {
      width: Math.max(el.clientWidth, 200),
      height: 200,
      legend: { show: true },
      scales: { x: { time: true } },
      axes: [{ stroke: '#333', values: (u, vals) => vals.map(hhmm) },
        { stroke: '#333', values: (u, vals) => vals.map((v) => (unit ? `${v}${unit}` : v)) }],
      series: [{ label: 'UTC', value: (u, v) => (v === null ? '--' : hhmm(v)) },
        ...series.map((s, i) => ({ label: s.label, stroke: COLORS[i % COLORS.length], width: 2,
          points: { show: Boolean(s.points), size: 6, fill: COLORS[i % COLORS.length] } }))],
    };
    const plot = new uPlot(opts, [xs, ...series.map((s) => s.values)], el);
    const resize = new ResizeObserver(() => plot.setSize({ width: Math.max(el.clientWidth, 200), height: 200 }));
    resize.observe(el);
    return () => { resize.disconnect(); plot.destroy(); };
  }, [xs, series]);
  return html`<figure class="chart">
    <figcaption>${title}</figcaption>
    <div ref=${box} role="img" aria-label=${`${title}: ${series.map((s) => `${s.label} ${s.summary || `total ${s.values.reduce((a, v) => a + (v || 0), 0)}`}`).join(', ')}`}></div>
  </figure>`;
}
