"""Monitoring and alerting: the seed's fourth layer.

One monitor per zone (host ``.7``, port 9100), any of them answers. Layout:

* :mod:`.settings` -- the ``monitoring:`` settings; :mod:`.addresses` -- where monitors live;
* :mod:`.store` -- the metrics database behind one interface, with the seed's two queries
  verbatim; backends :mod:`.duckdb` (embedded, the default) and :mod:`.postgres` (production);
* :mod:`.scrape` -- GETs within a timeout, Prometheus text parsing, rates;
* :mod:`.observer` and :mod:`.view` -- one look at every component, as a :class:`Snapshot`;
* :mod:`.probes` -- cross-zone latency probes into ``cross_zone_latency``;
* :mod:`.failovers` -- copies the control plane's ``failover_events``;
* :mod:`.exported` -- the monitor's ``/metrics``;
* :mod:`.alerts` and :mod:`.rules` -- rules, evaluation, log and webhook notifications;
* :mod:`.export` -- Prometheus rules file, scrape configuration, Grafana dashboard;
* :mod:`.report` -- ``crosszone report latency|failovers|slo``;
* :mod:`.cycle` -- :class:`Monitor`, one ``run_cycle`` per tick;
* :mod:`.monitor` -- ``create_monitor_app``, the HTTP API; :mod:`.dashboard` -- the web page.

Nothing heavy is imported here: ``from crosszone.monitoring.monitor import create_monitor_app``.
"""
