"""The released report of a match job: a dict (the stable JSON of design.md, key for key) that also
knows how to become a table and a chart.

    >>> report = match(server, token, df, id_column="phone", id_type="phone", label_column="store")
    >>> report["labels"]["north"]["matched"]          # as before: it is the same dict
    >>> report.to_pandas()                            # label, segment, count, rate, suppressed
    >>> report.plot()                                 # segment rates per label (matplotlib)

pandas and matplotlib are imported only when asked for (``pip install 'matcher[notebook]'``).
A suppressed cell (``None`` in the dict: its noisy count fell below the policy's threshold ``k``,
so it was not released) stays missing everywhere: ``<NA>`` in the DataFrame, no bar in the chart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from matcher.errors import InputError

MATCHED = "matched"  # the row of a label's overlap count, ahead of its segments
SUPPRESSED_LEGEND = "— = suppressed: noisy count below the policy's k threshold, not released"


class Report(dict):
    """A match job's report. It *is* the report dict (``json.dumps(report)`` writes the stable report
    JSON, unchanged); the methods only read it.

    ``label_sizes`` (not part of the JSON): unique IDs per label, known to the process that read the
    list (for a list of several identifier columns, the rows that sent at least one ID: the
    customers, since a member counts once however many of its IDs the list holds); it gives the
    ``matched`` rows their match rate. A report loaded from JSON (:meth:`load`)
    without it knows the rate only when it has a single label (then it is ``list_size``)."""

    def __init__(self, data: Mapping[str, Any] = (), *, label_sizes: Mapping[str, int] | None = None):
        super().__init__(data)
        self.label_sizes = dict(label_sizes) if label_sizes is not None else None

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """A report written by ``matcher-client match --json FILE``."""
        try:
            return cls(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read the report '{path}': {err}") from None

    def __repr__(self) -> str:
        # The dict holds the signed checkpoint and the log entry (kilobytes): show what a person looks for.
        labels = ", ".join(f"{label}: {cell.get('matched')}" for label, cell in self.get("labels", {}).items())
        return (f"Report(job_id={str(self.get('job_id'))[:12]!r}, list_size={self.get('list_size')}, "
                f"matched={{{labels}}}, segments={len(self.segments)}, epsilon_spent={self.get('epsilon_spent', 0):.6g})")

    def _repr_html_(self) -> str | None:
        """Jupyter shows the table (when pandas is there)."""
        try:
            return self.to_pandas()._repr_html_()
        except ImportError:
            return None

    @property
    def segments(self) -> list[str]:
        """The segments counted, in the server's order (none for a count-only job)."""
        if self.get("segments") is not None:
            return list(self["segments"])
        first = next(iter(self.get("labels", {}).values()), {})
        return list(first.get("segments", {}))

    def label_size(self, label: str) -> int | None:
        """Unique IDs under ``label``, when known."""
        if self.label_sizes is not None:
            return self.label_sizes.get(label)
        labels = self.get("labels", {})
        return self.get("list_size") if len(labels) == 1 and label in labels else None

    def cells(self) -> Iterator[tuple[str, str, int | None, float | None]]:
        """``(label, segment, count, rate)`` for each label: first its ``matched`` row (rate: matched over
        the label's unique IDs, the match rate), then each segment (rate: the segment's share of the
        label's matched IDs). ``count`` None: suppressed; ``rate`` None: not computable (a suppressed
        or zero count on either side, an unknown label size). Counts are noisy as released, so a
        rate can fall a little outside [0, 1]."""
        for label, cell in self.get("labels", {}).items():
            matched = cell.get("matched")
            yield label, MATCHED, matched, _ratio(matched, self.label_size(label))
            for segment in self.segments:
                count = cell.get("segments", {}).get(segment)
                yield label, segment, count, _ratio(count, matched)

    def to_pandas(self):
        """A tidy DataFrame, one row per label × segment (each label's ``matched`` row first):
        columns ``label``, ``segment``, ``count`` (Int64), ``rate`` (Float64), ``suppressed`` (bool).
        A suppressed cell has ``count`` and ``rate`` ``<NA>`` and ``suppressed`` True.

            >>> df = report.to_pandas()
            >>> df[df.segment != "matched"].pivot(index="segment", columns="label", values="rate")
        """
        pd = _need("pandas", "to_pandas()")
        rows = list(self.cells())
        return pd.DataFrame({
            "label": pd.Series([r[0] for r in rows], dtype="string"),
            "segment": pd.Series([r[1] for r in rows], dtype="string"),
            "count": pd.array([r[2] for r in rows], dtype="Int64"),
            "rate": pd.array([r[3] for r in rows], dtype="Float64"),
            "suppressed": pd.array([r[2] is None for r in rows], dtype="bool"),
        })

    def plot(self, ax=None):
        """Segment rates per label (each segment's share of the label's matched IDs) as grouped
        horizontal bars; a count-only report plots each label's match rate instead. A suppressed
        cell gets no bar and a "—" where it would start. Returns the matplotlib Axes (``ax`` when
        given, else a new figure's; ``ax.figure`` is the Figure).

            >>> report.plot().figure.savefig("report.png")
        """
        _need("matplotlib", "plot()")
        from matplotlib.ticker import PercentFormatter

        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * max(1, len(self.segments)) * max(1, len(self["labels"]))))
        rows = [r for r in self.cells() if (r[1] != MATCHED) == bool(self.segments)]
        labels = list(self.get("labels", {}))
        bars = list(dict.fromkeys(r[1] for r in rows))  # segments, or just "matched"
        height = 0.8 / max(1, len(labels))
        rates = {(r[0], r[1]): r[3] for r in rows}
        counts = {(r[0], r[1]): r[2] for r in rows}
        for i, label in enumerate(labels):
            ys = [b + i * height for b in range(len(bars))]
            values = [rates[(label, name)] for name in bars]
            ax.barh(ys, [v if v is not None else 0 for v in values], height=height, label=label)
            for y, name in zip(ys, bars):
                if counts[(label, name)] is None:
                    ax.text(0, y, " —", va="center", ha="left")
        ax.set_yticks([b + (len(labels) - 1) * height / 2 for b in range(len(bars))], bars)
        ax.invert_yaxis()
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        xlabel = "share of the label's matched IDs" if self.segments else "matched / the label's unique IDs"
        if any(c is None for c in counts.values()):
            xlabel += "\n" + SUPPRESSED_LEGEND
        ax.set_xlabel(xlabel, fontsize="small")
        ax.set_title(f"matcher report — job {str(self.get('job_id'))[:12]}, {self.get('list_size')} ids", loc="left")
        if len(labels) > 1:
            ax.legend(title="label", loc="best")
        return ax


def _ratio(count: int | None, total: int | None) -> float | None:
    return count / total if count is not None and total else None


def _need(module: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"Report.{what} needs {module}: pip install 'matcher[notebook]'") from None
