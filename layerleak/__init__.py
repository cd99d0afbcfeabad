"""layerleak's Python API: ``audit(model, members, nonmembers)`` and the ``AuditResult`` it returns (flows.api)."""

from flows.api import AuditResult, audit

__all__ = ["AuditResult", "audit"]
