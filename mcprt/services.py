"""build_services(settings, store, clock): every collaborator built and wired once, in one typed bag that
the HTTP handlers, the socket and the Server all receive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .access import Access
from .audit import Audit
from .cleaner import Cleaner
from .config import Settings
from .documents import DocumentService
from .edits import EditService
from .hub import Hub
from .cluster import Cluster, SharedDocuments, SharedLimits
from .identity import Verifier, verifier_for
from .limits import Limits
from .metrics import Metrics
from .protocol import Registry
from .sessions import SessionService
from .storage.base import Store
from .tasks import Tasks


@dataclass
class Services:
    """The collaborators, built by build_services; handlers reach them as `self.deps.<name>`."""

    settings: Settings
    store: Store
    clock: Callable[[], float]
    registry: Registry
    audit: Audit
    sessions: SessionService
    hub: Hub
    documents: DocumentService
    metrics: Metrics
    limits: Limits
    edits: EditService
    tasks: Tasks
    access: Access
    verifier: Verifier | None = None  # --auth jwt
    cluster: "Cluster | None" = None  # --redis: set by the Server once Redis answers
    shared: "SharedDocuments | None" = None  # --redis: who owns which document, and following the owner
    shared_limits: "SharedLimits | None" = None  # --redis: per-session and per-address limits across nodes


def build_services(settings: Settings, store: Store, clock: Callable[[], float]) -> Services:
    """Every collaborator, each given what it needs (and nothing reaching for a global)."""
    audit = Audit(store, clock, settings.violation_threshold, settings.violation_window)
    sessions = SessionService(store, clock, settings.session_ttl, settings.pending_ttl)
    metrics = Metrics(store, sessions)
    hub = Hub()
    limits = Limits(settings, clock)
    documents = DocumentService(store, clock, settings.sanitizer, settings.max_document_bytes,
                                settings.snapshot_interval, settings.history_window, quota=limits.documents)
    tasks = Tasks()
    edits = EditService(documents, hub, audit, clock, metrics, tasks,
                        Cleaner(settings.sanitizer, settings.sanitize_budget))
    metrics.watch(audit, hub)
    return Services(settings, store, clock, Registry(), audit, sessions, hub, documents, metrics, limits, edits,
                    tasks, Access(store, enforced=settings.auth == "jwt",
                           token_roles=bool(settings.jwt_roles_claim)), verifier_for(settings, clock))
