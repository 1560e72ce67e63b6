"""What a study shows: the report, its figures and tables, and the files they go to."""
