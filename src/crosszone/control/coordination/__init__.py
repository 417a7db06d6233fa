"""Leader election and a tiny KV over a consensus store, behind one interface.

:class:`~crosszone.control.coordination.base.Coordinator` states the guarantees;
:mod:`.raft` (embedded pysyncobj, the default) and :mod:`.etcd` (an etcd v3 cluster) implement
them; :class:`~crosszone.control.coordination.election.Elector` runs the campaign/renew cycle.
"""
