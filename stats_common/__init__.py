"""Code shared by every part of the usage-statistics system: the contract's
rules (free-text ban, schema versions, field documentation) and the command
line conventions of the services."""
