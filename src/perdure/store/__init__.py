"""Storage: the database is the source of truth, and this package is the only code that speaks SQL."""
