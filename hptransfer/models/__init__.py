"""Model families: the built-in transformer."""
