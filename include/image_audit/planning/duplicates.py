"""Duplicate catalog rows: the first valid row of a duplicate set wins, decided by SQL in rounds over
the rows that share an id or a URL, whatever the interval's size."""

from __future__ import annotations

from sqlalchemy import Connection, exists, func, literal, or_, select, update

from copyleaks_provider.scan_ids import make_rejection_id
from image_audit.planning.tables import Verdict, analyze, pages, plan_catalog, plan_shared, update_rows

#: Why a row is rejected when an accepted row before it has its (trimmed) image id.
DUPLICATE_ID = "duplicate image id in this interval"
#: Why a row is rejected when an accepted row before it has its URL; that row's trimmed id follows.
DUPLICATE_URL = "duplicate URL: same image as "


def resolve_duplicates(conn: Connection, model: str) -> None:
    """Reject every valid row of ``plan_catalog`` that an accepted row before it duplicates: by
    trimmed id (``DUPLICATE_ID``), else by URL (``DUPLICATE_URL`` and the accepted row's id). A row
    that only collides with rejected rows is accepted.

    In rounds over the rows that share an id or a URL: a row is accepted once every earlier row it
    shares its id or URL with lost; rejected as a duplicate id once an earlier row with its id won, as
    a duplicate URL once an earlier row with its URL won and no earlier row with its id may still win.
    Every round decides at least the earliest undecided row, so the rounds end.
    """
    catalog = plan_catalog.c
    id_key = func.coalesce(catalog.id_key, catalog.image_id)
    valid = select(catalog.pos, id_key.label("id_key"), catalog.url).where(catalog.error.is_(None)).subquery()
    ids = select(valid.c.id_key).group_by(valid.c.id_key).having(func.count() > 1)
    urls = select(valid.c.url).group_by(valid.c.url).having(func.count() > 1)
    candidates = select(valid).where(or_(valid.c.id_key.in_(ids), valid.c.url.in_(urls)))
    if not conn.execute(plan_shared.insert().from_select(["pos", "id_key", "url"], candidates)).rowcount:
        return
    analyze(conn, plan_shared)
    shared, earlier = plan_shared, plan_shared.alias("earlier")
    same_id, same_url = earlier.c.id_key == shared.c.id_key, earlier.c.url == shared.c.url
    undecided, open_ = shared.c.verdict.is_(None), earlier.c.verdict.is_(None)
    won = earlier.c.verdict == Verdict.WON

    def before(*conditions):
        return exists().where(earlier.c.pos < shared.c.pos, *conditions)

    url_winner = select(earlier.c.id_key).where(earlier.c.pos < shared.c.pos, same_url, won).scalar_subquery()
    rounds = [
        ({"verdict": Verdict.WON}, [~before(same_id, or_(open_, won)), ~before(same_url, or_(open_, won))]),
        ({"verdict": Verdict.LOST, "error": DUPLICATE_ID}, [before(same_id, won)]),
        (
            {"verdict": Verdict.LOST, "error": literal(DUPLICATE_URL) + url_winner},
            [before(same_url, won), ~before(same_id, open_)],
        ),
    ]
    decided = True
    while decided:
        decided = False
        for values, when in rounds:
            statement = update(shared).where(undecided, *when).values(**values)
            decided = bool(conn.execute(statement).rowcount) or decided
    lost = select(shared.c.pos, catalog.image_id, catalog.url, catalog.file_name, shared.c.error).join_from(
        shared, plan_catalog, catalog.pos == shared.c.pos
    )
    for page in pages(conn, lost.where(shared.c.verdict == Verdict.LOST), shared.c.pos):
        rejected = [
            {
                "pos": pos,
                "error": error,
                "reject_id": make_rejection_id(model, str(image_id), str(url), str(name), error),
            }
            for pos, image_id, url, name, error in page
        ]
        update_rows(conn, plan_catalog, rejected)
