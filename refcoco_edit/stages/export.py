"""The last step of a build: the export (Parquet + dataset card) rewritten from the shards."""
from __future__ import annotations

from typing import Any, Dict

from .context import BuildContext


def run(ctx: BuildContext, selection_report: Dict[str, Any]) -> Dict[str, Any]:
    """Export the workspace (``--export-status``) with the build's settings and selection report
    in the dataset card; returns ``refcoco_edit.export.export_workspace``'s summary.

    A build without a generated sample (every sample quarantined, or none selected) exports
    nothing: an export of no samples is no dataset. Its summary is then ``{"rows": 0, "out":
    None, "nothing": why (``export.no_samples_message``), "removed": whether an earlier export
    of the workspace was removed}`` (it described samples this workspace no longer holds)."""
    from ..export import NothingToExport, export_workspace, remove_export

    try:
        return export_workspace(ctx.ws, status=ctx.cfg.run.export_status, build_info={
            "settings": ctx.cfg.settings(), "demo_data": bool(ctx.data and ctx.data.demo), "selection": selection_report})
    except NothingToExport as e:
        return {"rows": 0, "out": None, "nothing": str(e), "removed": remove_export(ctx.ws.root / "export")}
