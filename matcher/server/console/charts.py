"""Charts as inline SVG strings, drawn here in Python: no JavaScript, no fonts or scripts from anywhere.

Every text that reaches the SVG is escaped; every chart carries a ``<title>`` and an aria-label,
and each bar its own ``<title>`` (the browser shows it on hover), so the numbers are readable
without the picture.
"""

from __future__ import annotations

from html import escape
from typing import Sequence

STATE_COLOURS = {"released": "#2f855a", "refused": "#b7791f", "failed": "#c53030", "running": "#2b6cb0"}
_OTHER = "#718096"
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def _nice_max(value: int) -> int:
    """A round axis maximum at or above ``value``: 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1
    step = 1
    while step * 10 <= value:
        step *= 10
    return next(m * step for m in (1, 2, 5, 10) if m * step >= value)


def stacked_bars(title: str, buckets: Sequence[dict[str, int]], labels: Sequence[str],
                 states: Sequence[str], *, width: int = 640, height: int = 220) -> str:
    """One bar per bucket, stacked by state in ``states`` order; ``labels`` name the buckets (a few are drawn)."""
    left, right, top, bottom = 36, 10, 26, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((sum(b.values()) for b in buckets), default=0)
    axis = _nice_max(peak)
    slot = plot_w / max(1, len(buckets))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<text x="{left}" y="16" {_FONT} font-weight="600">{escape(title)}</text>']
    for tick in (0, axis // 2, axis) if axis > 1 else (0, 1):
        y = top + plot_h - plot_h * tick / axis
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e2e8f0"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" {_FONT} text-anchor="end" fill="#4a5568">{tick}</text>')
    for i, bucket in enumerate(buckets):
        x = left + i * slot + slot * 0.15
        y = top + plot_h
        for state in [*states, *sorted(set(bucket) - set(states))]:
            n = bucket.get(state, 0)
            if not n:
                continue
            h = plot_h * n / axis
            y -= h
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                         f'fill="{STATE_COLOURS.get(state, _OTHER)}"><title>{escape(labels[i])}: {n} '
                         f'{escape(state)}</title></rect>')
    step = max(1, len(buckets) // 6)
    for i in range(0, len(buckets), step):
        x = left + i * slot + slot / 2
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 14}" {_FONT} text-anchor="middle" '
                     f'fill="#4a5568">{escape(labels[i])}</text>')
    x = left
    for state in states:
        parts.append(f'<rect x="{x}" y="{height - 12}" width="10" height="10" fill="{STATE_COLOURS.get(state, _OTHER)}"/>'
                     f'<text x="{x + 14}" y="{height - 3}" {_FONT}>{escape(state)}</text>')
        x += 24 + 7 * len(state)
    parts.append("</svg>")
    return "".join(parts)


def budget_bars(title: str, rows: Sequence[tuple[str, float, float]], *, width: int = 640) -> str:
    """One horizontal bar per (name, ε used, ε budget): the used share filled, the budget as the track."""
    left, right, top, row_h = 130, 110, 28, 26
    height = top + row_h * max(1, len(rows)) + 8
    plot_w = width - left - right
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<text x="4" y="16" {_FONT} font-weight="600">{escape(title)}</text>']
    if not rows:
        parts.append(f'<text x="4" y="{top + 16}" {_FONT} fill="#4a5568">no merchants yet</text>')
    for i, (name, used, budget) in enumerate(rows):
        y = top + i * row_h
        share = min(1.0, used / budget) if budget > 0 else (1.0 if used > 0 else 0.0)
        colour = "#c53030" if share >= 1 else "#b7791f" if share >= 0.8 else "#2b6cb0"
        label = f"{used:.4g} of {budget:.4g} ε"
        parts.append(f'<text x="{left - 6}" y="{y + 14}" {_FONT} text-anchor="end">{escape(name)}</text>'
                     f'<rect x="{left}" y="{y + 3}" width="{plot_w}" height="14" rx="3" fill="#edf2f7"/>'
                     f'<rect class="bar" x="{left}" y="{y + 3}" width="{plot_w * share:.1f}" height="14" rx="3" '
                     f'fill="{colour}"><title>{escape(name)}: {escape(label)}</title></rect>'
                     f'<text x="{left + plot_w + 6}" y="{y + 14}" {_FONT} fill="#4a5568">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
