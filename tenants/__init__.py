"""The tenant directory: tenants and their API keys as every replica sees them right now.

The config file seeds it; after that Redis holds the truth and the admin API changes it
(:mod:`tenants.store`), and each replica follows the changes within a second
(:mod:`tenants.directory`).
"""
