"""The last step of a build: the export (Parquet + dataset card) rewritten from the shards."""
from __future__ import annotations

from typing import Any, Dict

from .context import BuildContext


def run(ctx: BuildContext, selection_report: Dict[str, Any]) -> Dict[str, Any]:
    """Export the workspace (``--export-status``) with the build's settings and selection report
    in the dataset card; returns ``refcoco_edit.export.export_workspace``'s summary."""
    from ..export import export_workspace

    return export_workspace(ctx.ws, status=ctx.cfg.run.export_status, build_info={
        "settings": ctx.cfg.settings(), "demo_data": bool(ctx.data and ctx.data.demo), "selection": selection_report})
