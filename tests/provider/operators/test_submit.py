"""The provider's own ``CopyleaksSubmitImagesOperator``: a list of images in, outcomes out, results at
the provider's receiver (an in-memory sink here: no pipeline, no warehouse)."""

from __future__ import annotations

import pytest

from copyleaks_provider.operators.submit import CopyleaksSubmitImagesOperator
from copyleaks_provider.webhooks.callbacks import InMemoryCallbackSink
from copyleaks_provider.webhooks.receiver import create_receiver_app
from image_audit_dev.servers import BackgroundServer
from tests.support.emulator import copyleaks_connection
from tests.support.polling import wait_for


@pytest.fixture
def receiver_and_connection(start_emulator, monkeypatch, tmp_path):
    emulator = start_emulator()
    sink = InMemoryCallbackSink()
    with BackgroundServer(create_receiver_app(sink, webhook_secrets=["op-secret"])) as receiver:
        connection = copyleaks_connection(emulator, receiver.url, "op-secret")
        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
        monkeypatch.setenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", connection)
        yield emulator, sink


def test_submits_a_list_of_images_and_the_results_reach_the_sink(receiver_and_connection):
    emulator, sink = receiver_and_connection
    images = [
        {"scan_id": f"op-{i}", "url": emulator.sample_url(f"op-{i}.png"), "file_name": f"op-{i}.png"}
        for i in range(3)
    ]
    images.append({"scan_id": "op-bad", "url": emulator.sample_url("x.png"), "file_name": "notes.txt"})
    operator = CopyleaksSubmitImagesOperator(task_id="submit", images=images, sandbox=True)
    returned = operator.execute({})
    assert returned["submitted"] == 3 and returned["pending"] == {}
    assert list(returned["rejected"]) == ["op-bad"]
    assert "unsupported file extension '.txt'" in returned["rejected"]["op-bad"]
    wait_for(lambda: len(sink.results) >= 3, "the three results at the sink", timeout=30, interval=0.05)
    assert sorted(sink.results) == ["op-0", "op-1", "op-2"]
    assert emulator.state()["submissions"] == {"op-0": 1, "op-1": 1, "op-2": 1}  # not the invalid one


def test_images_are_templated():
    from airflow.sdk import DAG

    with DAG("templated_images", schedule=None):
        operator = CopyleaksSubmitImagesOperator(task_id="submit", images="{{ params.images }}")
    assert "images" in operator.template_fields
    operator.render_template_fields({"params": {"images": "rendered"}})
    assert operator.images == "rendered"
