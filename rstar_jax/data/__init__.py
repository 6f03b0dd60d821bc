"""Problem sources, the demo's toy world, data selection from search trees, and grain input pipelines."""
