"""The HTTP face of fairgate: routes, auth, validation, pool choice, streaming relay, metrics."""
