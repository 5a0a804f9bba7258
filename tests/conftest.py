"""Shared pytest set-up: float64 for every test (the project's precision; importing
fitcsc also turns it on unless FITCSC_FLOAT32=1) and the tests folder on the path so that
test modules import `helpers` (shared constants and builders)."""

import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
