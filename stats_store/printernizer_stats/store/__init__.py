"""The statistics database shared by the servers: its schema, its migrations,
the engine set-up, and one store per use (the aggregation server's ingest
writes, the rollup maintenance, the analytics server's reads). The servers
depend on this package and never on each other."""
