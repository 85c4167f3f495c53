"""Connectors: Kafka source and sink, JSON-lines file source and sink, reference-data sink."""
