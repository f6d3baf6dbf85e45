"""The ablation dashboard: DuckDB queries over the workspace's Parquet tables (``queries``), server-side
SVG figures (``charts``) and a small stdlib HTTP app (``app``). No Prefect, nothing fetched at run time."""

from evaluation.dashboard.app import DashboardServer, make_server, render_page
from evaluation.dashboard.queries import DashboardData, Series

__all__ = ["DashboardData", "DashboardServer", "Series", "make_server", "render_page"]
