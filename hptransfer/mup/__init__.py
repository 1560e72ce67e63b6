"""µP: each parameter's role, and the one table of width and depth arithmetic."""
