"""The public ingest server: receives signed weekly reports over TLS and stores them."""
