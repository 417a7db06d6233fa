"""Cross-zone data movement: async replication (DataReplicator) and strong writes
(CrossZoneTransaction), over in-process or HTTP peers."""

from crosszone.replication.http import HttpPeer
from crosszone.replication.peers import LocalPeer, ReplicationTransport, TxParticipant
from crosszone.replication.shipper import DataReplicator, Shipper
from crosszone.replication.transaction import CrossZoneTransaction, TxOutcome

__all__ = [
    "CrossZoneTransaction",
    "DataReplicator",
    "HttpPeer",
    "LocalPeer",
    "ReplicationTransport",
    "Shipper",
    "TxOutcome",
    "TxParticipant",
]
