"""Weighted-fair admission in Redis: queues, budgets, virtual token counters, leases."""
