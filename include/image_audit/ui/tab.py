"""The "Audit report" tab on each DAG run in the Airflow UI: ``GET /image-audit/runs/{dag_id}/{run_id}``;
and the "Audit trends" tab on the DAG: ``GET /image-audit/dags/{dag_id}/trends`` (``ui.trends``).

Mounted in the api-server by ``plugins/image_audit_plugin.py``, behind Airflow's auth manager (the caller
must be allowed to read the DAG's runs). It shows the run's HTML report once written, and until then a
self-refreshing progress page. It serves only a ``report.html`` under the configured reports location
(the recorded URI is data, not a request to read what it names), and every page carries a
Content-Security-Policy that lets it load nothing and lets only the Airflow UI frame it.
"""

from __future__ import annotations

import logging
import os
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Query
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from starlette.datastructures import MutableHeaders

from image_audit.config import warehouse_url
from image_audit.ui.links import TAB_NAME, TAB_ROUTE, TRENDS_NAME, TRENDS_ROUTE
from image_audit.ui.progress import RunProgress, account_requests_per_second, read_run_progress
from image_audit.ui.trends import DEFAULT_DAYS, MAX_DAYS, read_trends, render_trends, trends_csv
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_reports

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

URL_PREFIX = "/image-audit"
REFRESH_SECONDS = 10
#: The tab on each DAG run page (``{DAG_ID}`` and ``{RUN_ID}`` are filled in, URL-encoded, by the UI).
EXTERNAL_VIEW = {
    "name": TAB_NAME,
    "href": URL_PREFIX + "/runs/{DAG_ID}/{RUN_ID}",
    "destination": "dag_run",
    "url_route": TAB_ROUTE,
}
#: The tab on each DAG's page.
TRENDS_VIEW = {
    "name": TRENDS_NAME,
    "href": URL_PREFIX + "/dags/{DAG_ID}/trends",
    "destination": "dag",
    "url_route": TRENDS_ROUTE,
}
_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">{head}<title>{title}</title>
<style>body{{font:14px/1.5 system-ui,sans-serif;margin:24px;color:#1f2933}}table{{border-collapse:collapse}}
td,th{{padding:4px 16px 4px 0;text-align:left}}td.n{{text-align:right;font-variant-numeric:tabular-nums}}
.muted{{color:#627d98}}</style></head><body><h2>{title}</h2>{body}</body></html>"""
#: The headers of every response of the tab. Its pages are self-contained (the report: inline ``<style>``
#: and style attributes, inline SVG charts, thumbnails as ``data:`` URIs, no script), so they may load
#: nothing else, run no script, and be framed only by the Airflow UI (the same origin, the api-server).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'self'"
    ),
    "X-Frame-Options": "SAMEORIGIN",
    "X-Content-Type-Options": "nosniff",
}


class _BuiltAtFirstRequest:
    """An ASGI app that builds the real one at its first request. Every Airflow process imports the plugin
    (each task does, for its macros) but only the api-server serves this app, and Airflow's API security
    module, which its routes depend on, is slow to import."""

    def __init__(self, build):
        self._build, self._app = build, None

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if self._app is None:
            self._app = self._build()
        await self._app(scope, receive, send)


class _SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every response of the app (its pages, its errors and
    Airflow's refusals alike), unless the response set its own."""

    def __init__(self, app):
        self._app = app

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self._app(scope, receive, send_with_headers)


def create_ui_app() -> _BuiltAtFirstRequest:
    """The tab's app, for the plugin's ``fastapi_apps`` (mounted at :data:`URL_PREFIX`)."""
    return _BuiltAtFirstRequest(build_ui_app)


def build_ui_app() -> FastAPI:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    app = FastAPI(title="Image audit UI", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_SecurityHeaders)
    can_read_runs = Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))

    @app.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse, dependencies=[can_read_runs])
    def run_page(dag_id: str, run_id: str) -> HTMLResponse:
        """The run's report, else its live progress (blocking I/O: FastAPI runs it in a thread)."""
        with get_engine(warehouse_url()).connect() as conn:  # one connection for the page's reads
            html_path = conn.execute(
                select(audit_reports.c.html_path).where(
                    audit_reports.c.dag_id == dag_id, audit_reports.c.run_id == run_id
                )
            ).scalar()
            if not html_path:
                progress = read_run_progress(conn, dag_id, run_id, budget=account_requests_per_second())
        if html_path:
            return _report(dag_id, run_id, html_path)
        return _progress(progress)

    can_read_dag = Depends(requires_access_dag(method="GET"))
    days_query = Query(DEFAULT_DAYS, ge=1, le=MAX_DAYS)

    @app.get("/dags/{dag_id}/trends", response_class=HTMLResponse, dependencies=[can_read_dag])
    def trends_page(dag_id: str, days: int = days_query) -> HTMLResponse:
        """The last ``days`` days of the analytics model (``audit_daily`` only)."""
        with get_engine(warehouse_url()).connect() as conn:
            trends = read_trends(conn, days)
        return HTMLResponse(render_trends(dag_id, trends, days), headers={"Cache-Control": "no-store"})

    @app.get("/dags/{dag_id}/trends.csv", dependencies=[can_read_dag])
    def trends_table(dag_id: str, days: int = days_query) -> Response:
        """The page's table, one row per day and source."""
        with get_engine(warehouse_url()).connect() as conn:
            trends = read_trends(conn, days)
        name = f"audit-trends-{trends.first}-{trends.last}.csv"
        headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}
        return Response(trends_csv(trends), media_type="text/csv; charset=utf-8", headers=headers)

    return app


def _report(dag_id: str, run_id: str, uri: str) -> HTMLResponse:
    """The run's report if ``uri`` is one (:func:`report_file`), else a refusal (403), logged."""
    found = report_file(uri)
    if found is None:
        from image_audit.reporting.exports import redact_url

        log.warning(
            "Not serving the report of %s / %s: its recorded location %.300r is not a report under the "
            "reports location",
            dag_id,
            run_id,
            redact_url(uri) or uri,
        )
        body = "<p>The report recorded for this run is not under the reports location: it is not shown.</p>"
        return HTMLResponse(_PAGE.format(head="", title="Audit report refused", body=body), 403)
    try:
        text = found.read_text(encoding="utf-8")
    except Exception as exc:  # shown to the user: the tab says what is wrong instead of a bare 500
        body = f"<p>The report is recorded at <code>{escape(uri)}</code> but could not be read "
        body += f"({escape(type(exc).__name__)}).</p>"
        return HTMLResponse(_PAGE.format(head="", title="Audit report unavailable", body=body), 502)
    return HTMLResponse(text, headers={"Cache-Control": "no-store"})


def report_file(uri: str) -> Path | ObjectStoragePath | None:
    """The file of a report URI (``audit_reports.html_path``), read from the configured reports location:
    ``None`` unless it names a ``report.html`` under ``storage.reports_base()``.

    Local paths are compared resolved (``..`` and symlinks), so no link or traversal leads out; on an
    object store the URI must be the base's protocol and path, no ``..``, ``.`` or empty segment, and the
    object is read through the base (its connection, not one the URI names).
    """
    from image_audit.reporting.report import HTML_NAME
    from image_audit.reporting.storage import LOCAL_PROTOCOLS, is_local, reports_base

    base = reports_base()
    scheme, sep, path = uri.partition("://")
    if not sep:  # a bare path
        scheme, path = "", uri
    scheme = scheme.lower()
    if is_local(base):
        if scheme not in LOCAL_PROTOCOLS or not path.startswith("/"):
            return None
        try:
            root, found = Path(os.path.realpath(base.path)), Path(os.path.realpath(path))
        except (OSError, ValueError):  # e.g. a NUL byte
            return None
        return found if found.name == HTML_NAME and found.is_relative_to(root) else None
    prefix = base.path.rstrip("/") + "/"
    if scheme != base.protocol or not path.startswith(prefix):
        return None
    parts = path.removeprefix(prefix).split("/")
    if parts[-1] != HTML_NAME or any(part in ("", ".", "..") for part in parts):
        return None
    return base.joinpath(*parts)


def _progress(progress: RunProgress) -> HTMLResponse:
    """Where the run is, its measured request rate against the account's budget, and when it may end
    (``image_audit.ui.progress``: the deadline alert says the same)."""
    dag_id, run_id = progress.dag_id, progress.run_id
    table = "".join(f"<tr><th>{k}</th><td class='n'>{v:,}</td></tr>" for k, v in progress.rows().items())
    rate_line, outlook = progress.rate_line(), progress.outlook()
    body = (
        f"<p class='muted'>{escape(dag_id)} / {escape(run_id)}: no report yet. This page refreshes "
        f"every {REFRESH_SECONDS} s.</p><table>{table}</table>"
        f"<p>{escape(rate_line)}</p><p>{escape(outlook)}</p>"
    )
    head = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
    return HTMLResponse(
        _PAGE.format(head=head, title="Audit in progress", body=body), headers={"Cache-Control": "no-store"}
    )
