"""Agent: configuration, pipeline wiring, aggregation, reconciliation, alerts, exports and the CLI."""

__all__: list[str] = []
