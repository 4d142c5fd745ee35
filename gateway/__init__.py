"""The HTTP face of fairgate: routes, auth, validation, streaming relay, admin API."""
