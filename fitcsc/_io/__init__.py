"""Data in and results out: CSV reading, tidy tables, NONMEM files, padded batches, arms,
clinical tables, regimen tables, user drug catalogues, plausibility limits, atomic files,
run records and checkpoints."""
