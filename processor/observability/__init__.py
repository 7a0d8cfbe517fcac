"""What the stage tells operators: Prometheus metric families, state gauges, health endpoints.

* :mod:`~processor.observability.families` creates every metric family once (names, labels,
  buckets; vectorised histograms for per-batch observations);
* :mod:`~processor.observability.metrics` is the module callers use (``metrics.NAME``): the
  families plus the gauge exporter that refreshes lag, posterior and ensemble gauges;
* :mod:`~processor.observability.http` serves ``/metrics``, ``/healthz`` and ``/readyz``.
"""
