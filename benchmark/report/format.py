"""Cell formatting shared by report.md's parts (``report.markdown``, ``report.judge``) and the gallery."""
from __future__ import annotations

import html
from typing import Any, Dict, Optional

__all__ = ["fmt_value", "protocol_text"]


def _md(text: Any) -> str:
    """A table cell: no pipes or newlines, HTML-escaped."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def fmt_value(v: Optional[float], scale: float = 1.0) -> str:
    """A value for a table: 3 decimals (2 from 10 on), 3 significant digits when tiny or huge, — for None."""
    if v is None:
        return "—"
    x = v * scale
    a = abs(x)
    if a != 0 and (a >= 1e4 or a < 1e-3):
        return f"{x:.3g}"
    return f"{x:.3f}" if a < 10 else f"{x:.2f}"


def _cell(m: Optional[Dict[str, Any]], scale: float, ci: bool = True) -> str:
    if not m or m.get("mean") is None:
        return "—"
    s = fmt_value(m["mean"], scale)
    if ci and m.get("ci95"):
        s += f" [{fmt_value(m['ci95'][0], scale)}, {fmt_value(m['ci95'][1], scale)}]"
    return s


def _arrow(hib: Optional[bool]) -> str:
    return " ↑" if hib is True else (" ↓" if hib is False else "")


def protocol_text(editor: Dict[str, Any]) -> str:
    """What the editor saw, e.g. ``image+prompt+gt_mask``."""
    p = editor.get("protocol") or []
    return "image+prompt" + "".join(f"+{x}" for x in p)
