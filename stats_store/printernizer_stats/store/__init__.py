"""The statistics database shared by the servers: its schema, its migrations,
the engine set-up, the ingest store (the aggregation server's writes) and the
rollup store (keeping the weekly rollups). The analytics server reads the
schema's rollup tables. The servers depend on this package and never on each
other."""
