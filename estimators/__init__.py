"""Cost of a request before it runs: prompt tokens, expected and maximum output tokens."""
