"""/metrics over the workers' files: a file being created fails no scrape."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.mmap_dict import mmap_key

from chatapp.metrics import Metrics


def test_a_worker_file_still_empty_is_left_out_of_the_sum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    # One worker's counter, written as prometheus_client writes it ...
    counted = MmapedDict(str(tmp_path / "counter_101.db"))
    name = "chatapp_probe_total"
    key = mmap_key(name, name, (), (), "A probe.")
    counted.write_value(key, 3.0, 0.0)
    counted.close()
    # ... and another worker's file at the moment it is created: empty.
    (tmp_path / "counter_102.db").touch()
    text = Metrics().render().decode()
    assert "chatapp_probe_total 3.0" in text
