"""Exporters: they only export; timing and retries belong to the agent."""
