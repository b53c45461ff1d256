"""The Faust application: one per worker process, configured from app.settings."""

from __future__ import annotations

import logging
from typing import Any

import faust

from app import kafka_backoff, log_summary, metrics
from app.kafka_security import aiokafka_kwargs, faust_credentials
from app.log_levels import faust_logging_config
from app.settings import Settings, get_settings
from app.topics import TopicNames, ensure_topics
from app.web_tls import server_context

log = logging.getLogger(__name__)


class AnalyticsApp(faust.App):
    """faust.App that creates the pipeline's topics before its consumer subscribes to them."""

    analytics_settings: Settings
    topic_names: TopicNames

    async def on_first_start(self) -> None:
        # Faust makes its data directory without parents (`--datadir a/b/c` with no `a/b`
        # fails in faust.App._create_directories, called by super().on_first_start())
        self.conf.datadir.mkdir(parents=True, exist_ok=True)
        # logging is set up by now (faust worker): repeated library records get summarised
        self.add_future(log_summary.flush_every(log_summary.install()))
        settings = self.analytics_settings
        await ensure_topics(
            aiokafka_kwargs(settings), self.topic_names, settings.engine.topic_partitions
        )
        if settings.metrics.enabled:  # the port rule is in app/metrics.py
            metrics.start(self.conf.web_bind, settings.metrics.port)
        await super().on_first_start()


def create_app(settings: Settings | None = None) -> AnalyticsApp:
    """Build the app from settings; agents and views are found by autodiscovery."""
    settings = settings or get_settings()
    kafka_backoff.install()  # aiokafka retries metadata without pause while no broker answers
    engine = settings.engine
    http = settings.sources.http
    options: dict[str, Any] = dict(
        broker=[f"kafka://{broker}" for broker in settings.brokers],
        broker_credentials=faust_credentials(settings),
        store=engine.store,
        topic_partitions=engine.topic_partitions,
        topic_allow_declare=True,
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee=engine.processing_guarantee,
        broker_session_timeout=engine.session_timeout.total_seconds(),
        broker_heartbeat_interval=engine.heartbeat_interval.total_seconds(),
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=settings.sources.kafka.group_instance_id,
        producer_linger_ms=5,
        producer_max_batch_size=256 * 1024,
        web_bind=http.host,
        web_host=http.host,
        web_port=http.port,
        web_ssl_context=server_context(http),
        canonical_url=f"{http.scheme}://{http.host}:{http.port}",  # Faust's default says http
        web_in_thread=False,
        autodiscover=["agents", "web"],
        origin="app",
        logging_config=faust_logging_config(),  # library log levels: app/log_levels.py
    )
    app = AnalyticsApp(settings.app_id, **options)
    app.analytics_settings = settings
    app.topic_names = TopicNames.with_prefix(settings.engine.topic_prefix)
    return app
