"""The local statistics agent: a sidecar that Printernizer talks to over a Unix socket."""
