"""Built-in deepscope metrics: pure numpy/scipy functions plus thin plugin adapters (in .plugins)."""
