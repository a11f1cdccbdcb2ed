"""The hub in the terminal: one row per microscope, refreshed every second (rich)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

__all__ = ["monitors_table"]

_STATUS = {"alive": "[green]alive[/]", "silent": "[yellow]silent[/]", "ended": "[dim]ended[/]",
           "waiting": "[dim]waiting[/]"}


def _f(v: Any, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def monitors_table(snapshot: dict[str, Any]) -> Table:
    t = Table(title="emstream hub (read-only)", caption=f"{snapshot['rejected']} message(s) "
              "rejected", expand=False)
    # short headings: the table fits 80 columns
    for col in ("name", "status", "frame", "n", "D50", "state", "fps", "ok/quar/bad",
                "last alert"):
        wraps = col in ("frame", "last alert")
        t.add_column(col, no_wrap=not wraps, overflow="fold" if wraps else "ellipsis",
                     min_width=7 if col == "status" else None)
    for m in snapshot["monitors"]:
        f = m["last_frame"]
        last = m["alerts"][0] if m["alerts"] else None
        t.add_row(
            escape(m["name"]), _STATUS.get(m["status"], m["status"]),
            "–" if f.get("seq") is None else escape(f"#{f['seq']} {f.get('source') or ''}"[:40]),
            _f(f.get("count"), ".0f"),
            escape(f"{_f(f.get('d50'))} {f.get('unit') or ''}".strip()),
            escape((f.get("state") or "–").replace("_", " ")),
            f"{m['fps']:.2f}",
            f"{m['processed']}/{m['quarantined']}/{m['not_ok']}",
            "" if last is None else escape(f"{last['severity']}: {last['rule']}: "
                                           f"{last['message']}"[:60]),
        )
    return t
