"""Fingerprints: the catalogue, its schema and loader, the compiled match index, Recog import."""

__all__: list[str] = []
