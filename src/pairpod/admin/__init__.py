"""Running pairpod for a team: metrics, probes, the audit log and the admin view."""

from pairpod.admin.ops import ENDED_BY_ADMIN, Operations

__all__ = ["ENDED_BY_ADMIN", "Operations"]
