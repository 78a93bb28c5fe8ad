"""deepscope client SDK."""
