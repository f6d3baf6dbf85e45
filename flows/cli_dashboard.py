"""``unimoe dashboard``: serve the ablation dashboard (evaluation/dashboard) over a workspace."""

from __future__ import annotations

import typer

from flows.cli_options import Workspace, fail


def register(app: typer.Typer) -> None:
    @app.command("dashboard")
    def dashboard_cmd(
        workspace: Workspace = None,
        host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 exposes it to the network)."),
        port: int = typer.Option(8765, help="Port (0 picks a free one)."),
        open_browser: bool = typer.Option(False, "--open/--no-open", help="Open the page in a web browser."),
    ):
        """Serve the ablation dashboard: metric deltas against a baseline, radar, routing and loss figures,
        nightly history. Reads the Parquet tables on every page load, so new results show on refresh."""
        import webbrowser

        from evaluation.dashboard import make_server
        from flows.common import workspace_root

        ws = workspace_root(workspace)
        try:
            server = make_server(ws, host, port)
        except OSError as e:
            fail(f"cannot listen on {host}:{port}: {e}")
        typer.echo(f"Serving the UniMoE-Audio dashboard for {ws} at {server.url} (Ctrl-C to stop)")
        if open_browser:
            webbrowser.open(server.url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
