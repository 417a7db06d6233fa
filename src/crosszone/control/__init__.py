"""The control plane: health checks, failover decisions, zonal shifts, DNS, leader election.

Layout (one module per concern, one per backend):

* :mod:`.settings` -- the ``control:`` topology section and its timing rules;
* :mod:`.coordination` -- the leader lease and a tiny KV behind one interface
  (:mod:`.coordination.raft` embedded pysyncobj, :mod:`.coordination.etcd` etcd v3);
* :mod:`.health` -- active probes, passive signals, zone roll-up, gray-failure outliers;
* :mod:`.failover` -- the FailoverManager: pure decisions, one ``run_cycle`` per tick;
* :mod:`.shifts` -- zonal shifts (operator and autoshift);
* :mod:`.scaling` -- the auto-scaling groups' policy: pure decisions, one ``run_cycle`` per tick;
* :mod:`.fencing` -- fencing tokens: receivers reject commands from a deposed leader;
* :mod:`.dns` -- the authoritative DNS server;
* :mod:`.events` -- the durable ``failover_events`` table;
* :mod:`.controller` -- one controller per zone wiring it all; only the elected leader acts.

This package imports nothing at import time so that :mod:`crosszone.config.topology` can embed
:class:`crosszone.control.settings.ControlSettings` without an import cycle.
"""
