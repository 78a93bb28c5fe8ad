"""Plugin adapters for the built-in metric families, one module per family (entry points)."""
