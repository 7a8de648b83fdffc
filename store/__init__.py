"""Store: SQLAlchemy models, engines, migrations, batched upserts, retention, inventory import."""

__all__: list[str] = []
