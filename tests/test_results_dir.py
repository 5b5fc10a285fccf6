"""One results-directory naming for every lab command: <UTC stamp>-<command>[-N]."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.files import new_results_dir


def test_name_is_the_utc_stamp_then_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: a local stamp would be a day ahead
    before = datetime.now(timezone.utc).replace(microsecond=0)
    path = new_results_dir(tmp_path / "results", "bench")
    after = datetime.now(timezone.utc)
    assert path.is_dir() and path.parent == tmp_path / "results"
    m = re.fullmatch(r"(\d{8}-\d{6})-bench", path.name)
    assert m, path.name
    stamp = datetime.strptime(m.group(1), "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    assert before <= stamp <= after + timedelta(seconds=1)


def test_a_second_run_in_the_same_second_gets_a_number(tmp_path, monkeypatch):
    import tools.files

    fixed = datetime(2026, 12, 6, 13, 45, 1, tzinfo=timezone.utc)

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            assert tz is timezone.utc, "results directories are stamped in UTC"
            return fixed

    monkeypatch.setattr(tools.files, "datetime", Clock)
    names = [new_results_dir(tmp_path, cmd).name for cmd in ("check", "check", "compare", "check")]
    assert names == ["20261206-134501-check", "20261206-134501-check-2", "20261206-134501-compare",
                     "20261206-134501-check-3"]


def test_uncreatable_directory_is_one_tool_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ToolError) as err:
        new_results_dir(tmp_path / "file", "bench")
    assert err.value.exit_code == EXIT_ENVIRONMENT and "cannot create results directory" in str(err.value)
