"""Fitting: predictors, the likelihood, the one Levenberg–Marquardt, its lanes and
evaluators, the batched driver (`fit_map`), group fits, profiles, baselines, the
CSC spec builder, population models and the samplers."""
