"""Store: SQLAlchemy models, engines, migrations, batched upserts, retention, inventory import.

The public surface (everything else is private to the package):

- opening: ``open_store(url) -> Store`` (normalises the URL, sets the SQLite pragmas or the
  PostgreSQL pool, migrates to head), ``Store.write()`` (one transaction that writes),
  ``Store.session()``; ``make_engine``, ``normalise_url``, ``StoreError``;
- migrations: ``migrate(engine)``, ``head_revision()``, ``current_revision(engine)``,
  ``alembic_config()`` (Alembic scripts ship in ``store/migrations``);
- upserts: ``upsert`` (generic, keys merged in memory before the batch), ``merge_rows``, and one
  per table the aggregator writes: ``upsert_observations`` (``upsert_observation_rows`` for
  tuples of ``OBSERVATION_COLUMNS``), ``upsert_endpoints`` (returns the row ids),
  ``upsert_aliases``, ``upsert_detections``, ``upsert_agent``;
- retention: ``purge(session, days=DEFAULT_RETENTION_DAYS) -> PurgeResult``;
- the declared inventory: ``read_inventory`` / ``parse_inventory`` (CSV or XLSX, all-or-nothing,
  ``InventoryFileError`` with line-numbered ``ImportIssue``), ``import_inventory`` /
  ``apply_inventory`` (entries upserted with their change history);
- the models and their enumerations (``store._models`` documents the schema).
"""

from store._among import among
from store._engine import (
    Store,
    StoreError,
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    normalise_url,
    open_store,
)
from store._inventory import (
    DeclaredEntry,
    ImportIssue,
    ImportResult,
    InventoryFile,
    InventoryFileError,
    apply_inventory,
    import_inventory,
    parse_inventory,
    read_inventory,
)
from store._models import (
    Agent,
    Alert,
    AlertReason,
    AlertState,
    Base,
    ChangeLogEntry,
    Detection,
    Endpoint,
    EndpointAlias,
    IdentityKind,
    IngestedFile,
    InventoryEntry,
    ObservationAggregate,
    ProbeLogEntry,
    Reconciliation,
    ReconciliationStatus,
    Review,
    ReviewDecision,
    UtcDateTime,
)
from store._retention import DEFAULT_RETENTION_DAYS, PurgeResult, purge
from store._upsert import (
    BATCH_SIZE,
    OBSERVATION_COLUMNS,
    merge_observation_rows,
    merge_rows,
    upsert,
    upsert_agent,
    upsert_aliases,
    upsert_detections,
    upsert_endpoints,
    upsert_observation_rows,
    upsert_observations,
)

__all__ = [
    "BATCH_SIZE",
    "DEFAULT_RETENTION_DAYS",
    "OBSERVATION_COLUMNS",
    "Agent",
    "Alert",
    "AlertReason",
    "AlertState",
    "Base",
    "ChangeLogEntry",
    "DeclaredEntry",
    "Detection",
    "Endpoint",
    "EndpointAlias",
    "IdentityKind",
    "ImportIssue",
    "ImportResult",
    "IngestedFile",
    "InventoryEntry",
    "InventoryFile",
    "InventoryFileError",
    "ObservationAggregate",
    "ProbeLogEntry",
    "PurgeResult",
    "Reconciliation",
    "ReconciliationStatus",
    "Review",
    "ReviewDecision",
    "Store",
    "StoreError",
    "UtcDateTime",
    "alembic_config",
    "among",
    "apply_inventory",
    "current_revision",
    "head_revision",
    "import_inventory",
    "make_engine",
    "merge_observation_rows",
    "merge_rows",
    "migrate",
    "normalise_url",
    "open_store",
    "parse_inventory",
    "purge",
    "read_inventory",
    "upsert",
    "upsert_agent",
    "upsert_aliases",
    "upsert_detections",
    "upsert_endpoints",
    "upsert_observation_rows",
    "upsert_observations",
]
