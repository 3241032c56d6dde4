"""Prometheus metrics of the drift consumer, declared once (its own registry, like ServiceMetrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class DriftMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        v = ["model_version"]
        self.messages = Counter(
            "rakuten_drift_messages_total", "messages consumed by the drift consumer", ["topic"], registry=r
        )
        self.dead_letters = Counter("rakuten_drift_dead_letters_total", "undecodable messages", ["reason"], registry=r)
        self.open_window = Gauge(
            "rakuten_drift_open_window_predictions", "predictions in the open window", v, registry=r
        )
        self.windows = Counter(
            "rakuten_drift_windows_total", "windows closed", ["model_version", "closed_by"], registry=r
        )
        self.window_predictions = Gauge(
            "rakuten_drift_window_predictions", "predictions in the last window", v, registry=r
        )
        self.window_labels = Gauge("rakuten_drift_window_labels", "labels joined in the last window", v, registry=r)
        self.drift_score = Gauge("rakuten_drift_score", "drift score of the last window", v, registry=r)
        self.drift_threshold = Gauge(
            "rakuten_drift_threshold", "calibrated threshold of the last window", v, registry=r
        )
        self.estimated_f1 = Gauge(
            "rakuten_drift_estimated_f1", "estimated weighted F1 of the last window", v, registry=r
        )
        self.true_f1 = Gauge("rakuten_drift_true_f1", "weighted F1 on the labels of the last window", v, registry=r)
        self.reference_f1 = Gauge("rakuten_drift_reference_f1", "held-out weighted F1 of the version", v, registry=r)
        self.mean_confidence = Gauge(
            "rakuten_drift_mean_confidence", "mean confidence of the last window", v, registry=r
        )
        self.image_share = Gauge("rakuten_drift_image_share", "share of the last window with an image", v, registry=r)
        self.alarms = Counter(
            "rakuten_drift_alarms_total", "windows that fired a trigger", ["model_version", "trigger"], registry=r
        )
        self.alarm_active = Gauge("rakuten_drift_alarm", "1 while the last window alarmed", v, registry=r)
        self.retrain_requests = Counter(
            "rakuten_drift_retrain_requests_total", "retrain requests published", ["reason"], registry=r
        )
        self.suppressed = Counter(
            "rakuten_drift_retrain_suppressed_total",
            "requests not sent: cooldown or another consumer's request",
            registry=r,
        )

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
