"""One training run: the loop, its optimizer and schedule, data-parallel ranks."""
