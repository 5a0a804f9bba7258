"""Solving the model: `simulate` (one diffrax solve) and the paced solver of the fit
engine, both on the one right-hand side of `fitcsc._model.family.family`."""
