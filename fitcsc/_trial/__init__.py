"""The clinical trial layer: endpoint formulas, the trial model (virtual patients,
pCR, DFS, HR), its observations, objective and fit files, and its posterior draws."""
