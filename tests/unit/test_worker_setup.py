"""What the app sets up before Faust runs: the parents of its data directory, and the log
levels of the libraries under it (app/faust_app.py, app/log_levels.py)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import faust
import pytest

from app import faust_app
from app.faust_app import AnalyticsApp, create_app
from app.log_levels import LIBRARY_LOG_LEVELS
from app.settings import load_settings


@pytest.fixture
def analytics_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AnalyticsApp:
    """A fresh app whose data directory (``faust --datadir``) has no parents yet."""
    monkeypatch.setenv("APP_DATADIR", str(tmp_path / "scratch" / "worker-data" / "cluster-1"))
    monkeypatch.setenv("ANALYTICS__METRICS__ENABLED", "false")

    async def no_topics(*args: object) -> None:
        return None

    monkeypatch.setattr(faust_app, "ensure_topics", no_topics)
    return create_app(load_settings())


async def test_the_data_directory_is_created_with_its_parents(
    analytics_app: AnalyticsApp, tmp_path: Path
) -> None:
    datadir = tmp_path / "scratch" / "worker-data" / "cluster-1"
    assert analytics_app.conf.datadir == datadir
    assert not datadir.parent.exists()

    await analytics_app.on_first_start()  # Faust's _create_directories runs at its end

    assert analytics_app.conf.appdir.is_dir()
    assert analytics_app.conf.appdir.parent == datadir


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger and the library loggers back as they were."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOG_LEVELS}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def configure_like_faust_worker(app: AnalyticsApp, loglevel: str, logfile: Path) -> None:
    """What ``faust -A app worker [-l LEVEL]`` does to logging before the app starts."""
    out = io.StringIO()
    worker = faust.Worker(
        app, loglevel=loglevel, logfile=str(logfile), stdout=out, stderr=out, redirect_stdouts=False
    )
    worker._setup_logging()


@pytest.mark.parametrize("loglevel", ["info", "warn"])
@pytest.mark.usefixtures("restore_logging")
def test_library_loggers_have_their_levels_whatever_the_root_level(
    analytics_app: AnalyticsApp, tmp_path: Path, loglevel: str
) -> None:
    # without -l (warn), Faust's spinner puts the root logger at DEBUG
    configure_like_faust_worker(analytics_app, loglevel, tmp_path / "worker.log")

    for name, level in LIBRARY_LOG_LEVELS.items():
        assert logging.getLogger(name).level == logging.getLevelName(level), name
    producer = logging.getLogger("aiokafka.producer.producer")
    assert not producer.isEnabledFor(logging.DEBUG), "a debug record per produced message"
    assert not producer.isEnabledFor(logging.INFO)


@pytest.mark.usefixtures("restore_logging")
def test_the_workers_own_info_lines_still_show(analytics_app: AnalyticsApp, tmp_path: Path) -> None:
    logfile = tmp_path / "worker.log"
    configure_like_faust_worker(analytics_app, "info", logfile)

    logging.getLogger("app.startup").info("analytics worker ready: test line")
    logging.getLogger("agents.behavior_tracker").info("partition 3: test line")
    logging.getLogger("faust.tables.recovery").info("recovery: test line")
    logging.getLogger("aiokafka.producer.producer").info("aiokafka: test line")
    for handler in logging.getLogger().handlers:
        handler.flush()

    text = logfile.read_text()
    assert "analytics worker ready: test line" in text
    assert "partition 3: test line" in text
    assert "recovery: test line" in text
    assert "aiokafka: test line" not in text
