"""Where a report's files go: a local directory or an object store, through Airflow's ``ObjectStoragePath``.

The base is ``image_audit.config.reports_url()`` (``IMAGE_AUDIT_REPORTS_URL``), the store's credentials
those of the connection ``reports_conn_id()`` (``IMAGE_AUDIT_REPORTS_CONN_ID``; unset: the store's
default). Each file is written whole to a local file, then published in one step (a rename beside the
target on the local disk, one upload to an object store, never a temporary key): a reader sees the old
file or the new one, never a partial one, and a file whose writing fails is not published. The three
files are not one atomic set; the warehouse row and the Asset event are written after all three.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from airflow.sdk import ObjectStoragePath

from image_audit.config import reports_conn_id, reports_url

#: ObjectStoragePath protocols of the local file system ("" for a path given without a scheme).
LOCAL_PROTOCOLS = frozenset({"", "file", "local"})


def as_storage_path(location: str | os.PathLike[str] | ObjectStoragePath) -> ObjectStoragePath:
    """``location`` as an ``ObjectStoragePath``: a URL (with the reports connection) or a local path."""
    if isinstance(location, ObjectStoragePath):
        return location
    text = os.fspath(location)
    if "://" in text:
        return ObjectStoragePath(text, conn_id=reports_conn_id())
    return ObjectStoragePath(os.path.abspath(text), protocol="file")


def reports_base() -> ObjectStoragePath:
    """The configured base of all reports (``IMAGE_AUDIT_REPORTS_URL``, else the local reports directory)."""
    return as_storage_path(reports_url())


def is_local(path: ObjectStoragePath) -> bool:
    return path.protocol in LOCAL_PROTOCOLS


def uri(path: ObjectStoragePath) -> str:
    """The URI of ``path`` without the connection id (``file:///...``, ``s3://bucket/key``).

    ``str(path)`` would name the connection (``s3://aws_reports@bucket/key``); the row and the Asset event
    name the object alone, and whoever reads it brings their own credentials.
    ``ObjectStoragePath(uri(path), conn_id=...)`` is ``path`` again.
    """
    return f"{path.protocol or 'file'}://{path.path}"


@contextmanager
def staged(target: ObjectStoragePath) -> Iterator[Path]:
    """A local file to write ``target``'s content to; published to ``target`` whole when the block succeeds.

    On failure nothing is published and the staged file is removed.
    """
    if is_local(target):
        final = Path(target.path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".tmp")
        try:
            yield tmp
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return
    with tempfile.TemporaryDirectory(prefix="image-audit-report-") as workdir:
        tmp = Path(workdir) / target.name  # the same name: the store guesses the content type from it
        yield tmp
        # put_file, not rename: no partial object is ever visible, and a big file goes up in parts
        target.fs.put_file(str(tmp), target.path)
