"""Several gateway replicas as one: what they share through Redis.

``store`` is the replica's one Redis client (health, bounded commands,
pub/sub, recovery hooks); the modules beside it keep one kind of shared
state each.
"""

from pairpod.cluster.keycache import RedisKeyCache
from pairpod.cluster.lockout import RedisLocks
from pairpod.cluster.store import ClusterStore, StoreState, StoreUnavailable

__all__ = ["ClusterStore", "RedisKeyCache", "RedisLocks", "StoreState", "StoreUnavailable"]
