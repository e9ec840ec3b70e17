"""The agent: sampling, the per-device timelines, and (later) span ingest, attribution, export."""
