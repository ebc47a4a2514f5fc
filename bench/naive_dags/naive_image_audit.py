"""The DAG users write first, for the benchmark to beat: one mapped task per image, a poke-mode sensor.

It reads the same catalog interval, submits each image in its own task instance through the same hook
(so it is only the shape that differs), records each scan so the same receiver accepts its callback,
and pokes the warehouse every 10 s (Airflow's default is 60 s) until every result is in. The catalog
rows go through XCom, as they do in such DAGs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, get_current_context, task
from airflow.sdk.bases.sensor import PokeReturnValue
from airflow.timetables.interval import CronDataIntervalTimetable

with DAG(
    dag_id="naive_image_audit",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),  # the audit DAG's intervals
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_tasks=64,
):

    @task
    def list_images() -> list[dict]:
        from image_audit.planning.catalog import CatalogSpec, read_catalog
        from image_audit.warehouse.engine import get_engine

        context = get_current_context()
        start, end = context["data_interval_start"], context["data_interval_end"]
        rows = read_catalog(get_engine(), CatalogSpec(), start, end)
        return [{"image_id": r.image_id, "url": r.url, "file_name": r.file_name} for r in rows]

    @task(retries=2, retry_delay=timedelta(seconds=5))
    def submit_image(image: dict) -> str:
        from copyleaks_provider.hooks.copyleaks import CopyleaksHook
        from copyleaks_provider.scan_ids import make_scan_id
        from image_audit.warehouse.engine import get_engine
        from image_audit.warehouse.schema import audit_scans

        context = get_current_context()
        hook = CopyleaksHook()
        scan_id = make_scan_id(image["image_id"], "ai-image-1-ultra-01-09-2025", 1)
        now = datetime.now(UTC)
        with get_engine().begin() as conn:
            conn.execute(
                audit_scans.insert().values(
                    scan_id=scan_id,
                    image_id=image["image_id"],
                    model="ai-image-1-ultra-01-09-2025",
                    attempt=1,
                    state="submitted",
                    dag_id=context["dag"].dag_id,
                    run_id=context["run_id"],
                    created_at=now,
                    updated_at=now,
                )
            )
        hook.submit_image(hook.build_submit_request(scan_id, image["url"], image["file_name"]))
        return scan_id

    @task.sensor(poke_interval=10, timeout=3600, mode="poke")
    def wait_for_results(scan_ids: list[str]) -> PokeReturnValue:
        from sqlalchemy import func, select

        from image_audit.warehouse.engine import get_engine
        from image_audit.warehouse.schema import audit_results, audit_scans

        context = get_current_context()
        stored_for_run = (
            select(func.count())
            .select_from(audit_results.join(audit_scans, audit_results.c.scan_id == audit_scans.c.scan_id))
            .where(audit_scans.c.dag_id == context["dag"].dag_id, audit_scans.c.run_id == context["run_id"])
        )
        with get_engine().connect() as conn:
            stored = conn.execute(stored_for_run).scalar_one()
        return PokeReturnValue(is_done=stored >= len(scan_ids))

    wait_for_results(submit_image.expand(image=list_images()))
