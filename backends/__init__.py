"""Engines and pools: classification, capacity, health, load, and the forwarding client."""
