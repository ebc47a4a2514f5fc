"""Duplicate catalog rows, decided by SQL in rounds over the rows that share an id or a URL, so the
first valid row of a duplicate set wins whatever the interval's size."""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, exists, func, literal, or_, select, update

from copyleaks_provider.scan_ids import make_rejection_id
from image_audit.planning.tables import LOST, WON, analyze, pages, plan_catalog, plan_shared, update_rows

DUPLICATE_ID = "duplicate image id in this interval"
DUPLICATE_URL = "duplicate URL: same image as "


def resolve_duplicates(conn: Connection, model: str) -> None:
    """Reject every valid row an earlier accepted row duplicates (the rule: ``image_audit.planning``).

    Only rows sharing an id or a URL take part, in rounds. A row is accepted once every earlier row
    it shares its id or URL with lost; rejected as a duplicate id once an earlier row with its id
    won, as a duplicate URL once an earlier row with its URL won and no earlier row with its id may
    still win. The earliest undecided row is always decided, and real duplicate sets take a round
    or two.
    """
    c = plan_catalog.c
    id_key = func.coalesce(c.id_key, c.image_id)
    valid = select(c.pos, id_key.label("id_key"), c.url).where(c.error.is_(None)).subquery()
    ids = select(valid.c.id_key).group_by(valid.c.id_key).having(func.count() > 1)
    urls = select(valid.c.url).group_by(valid.c.url).having(func.count() > 1)
    candidates = select(valid).where(or_(valid.c.id_key.in_(ids), valid.c.url.in_(urls)))
    if not conn.execute(plan_shared.insert().from_select(["pos", "id_key", "url"], candidates)).rowcount:
        return
    analyze(conn, plan_shared)
    s, e = plan_shared, plan_shared.alias("earlier")
    same_id, same_url = e.c.id_key == s.c.id_key, e.c.url == s.c.url
    undecided, open_, won = s.c.verdict.is_(None), e.c.verdict.is_(None), e.c.verdict == WON

    def before(*conditions):
        return exists().where(e.c.pos < s.c.pos, *conditions)

    url_winner = select(e.c.id_key).where(e.c.pos < s.c.pos, same_url, won).scalar_subquery()
    rounds = [
        {"verdict": WON, "when": [~before(same_id, or_(open_, won)), ~before(same_url, or_(open_, won))]},
        {"verdict": LOST, "error": DUPLICATE_ID, "when": [before(same_id, won)]},
        {
            "verdict": LOST,
            "error": literal(DUPLICATE_URL) + url_winner,
            "when": [before(same_url, won), ~before(same_id, open_)],
        },
    ]
    decided = True
    while decided:
        decided = False
        for step in rounds:
            values = {key: value for key, value in step.items() if key != "when"}
            statement = update(s).where(undecided, *step["when"]).values(**values)
            decided = bool(conn.execute(statement).rowcount) or decided
    lost = select(s.c.pos, c.image_id, c.url, c.file_name, s.c.error).join_from(
        s, plan_catalog, c.pos == s.c.pos
    )
    values = {"error": bindparam("e"), "reject_id": bindparam("r")}
    for page in pages(conn, lost.where(s.c.verdict == LOST), s.c.pos):
        rejected = [
            {
                "p": pos,
                "e": error,
                "r": make_rejection_id(model, str(image_id), str(url), str(name), error),
            }
            for pos, image_id, url, name, error in page
        ]
        update_rows(conn, plan_catalog, values, rejected)
