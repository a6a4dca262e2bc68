"""The HTTP edge: wire schemas, routes, and the mapping of engine errors to status codes."""
