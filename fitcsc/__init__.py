"""fitcsc: differentiable cancer-stem-cell tumour models with drug PK/PD, in JAX."""

# Fitting needs float64; set FITCSC_FLOAT32=1 before import to keep JAX's default.
import os as _os

from ._xla import hoist_small_loops as _hoist_small_loops

if _os.environ.get("FITCSC_LOOP_HOISTING", "1") != "0":  # see fitcsc/_xla.py
    _os.environ["XLA_FLAGS"] = _hoist_small_loops(_os.environ.get("XLA_FLAGS", ""))

import jax as _jax

if _os.environ.get("FITCSC_FLOAT32", "0") != "1":
    _jax.config.update("jax_enable_x64", True)

from ._errors import CatalogueError as CatalogueError
from ._errors import DataError as DataError
from ._errors import DataWarning as DataWarning
from ._errors import FitcscInputError as FitcscInputError
from ._errors import RegimenError as RegimenError
from ._fit.baselines import BASELINES as BASELINES
from ._fit.baselines import baseline_predictor as baseline_predictor
from ._fit.driver import FitResult as FitResult
from ._fit.driver import fit_map as fit_map
from ._fit.groups import GroupFitResult as GroupFitResult
from ._fit.groups import fit_groups as fit_groups
from ._fit.likelihood import log_likelihood as log_likelihood
from ._fit.likelihood import log_likelihood_from_log as log_likelihood_from_log
from ._fit.likelihood import residuals as residuals
from ._fit.lm import LeastSquaresResult as LeastSquaresResult
from ._fit.lm import least_squares as least_squares
from ._fit.population import PopulationModel as PopulationModel
from ._fit.population import SiteSpace as SiteSpace
from ._fit.population import population_model as population_model
from ._fit.population_csc import baseline_population as baseline_population
from ._fit.population_csc import csc_population as csc_population
from ._fit.predictors import AbstractPredictor as AbstractPredictor
from ._fit.predictors import CSCPredictor as CSCPredictor
from ._fit.predictors import FunctionPredictor as FunctionPredictor
from ._fit.predictors import SubjectData as SubjectData
from ._fit.predictors import csc_predictor as csc_predictor
from ._fit.predictors import subject_data as subject_data
from ._fit.profile import ProfileResult as ProfileResult
from ._fit.profile import profile as profile
from ._fit.sample import Posterior as Posterior
from ._fit.sample import sample as sample
from ._fit.sample import z_log_density as z_log_density
from ._io.arms import ARM_EC50_MG_PER_L as ARM_EC50_MG_PER_L
from ._io.arms import default_arm_regimens as default_arm_regimens
from ._io.arms import register_arm_drug as register_arm_drug
from ._io.batch import SubjectBatch as SubjectBatch
from ._io.batch import make_batch as make_batch
from ._io.clinical import read_clinical as read_clinical
from ._io.data import TidyTable as TidyTable
from ._io.data import data_dir as data_dir
from ._io.data import read_regimen_table as read_regimen_table
from ._io.data import read_tidy_csv as read_tidy_csv
from ._io.data import read_volumes as read_volumes
from ._io.drug_catalogue import load_drug_catalogue as load_drug_catalogue
from ._io.nonmem import read_nonmem as read_nonmem
from ._jobs.compile import CompileStats as CompileStats
from ._jobs.compile import enable_compile_cache as enable_compile_cache
from ._jobs.fit_job import fit_job as fit_job
from ._model.drugs import CATALOGUE as CATALOGUE
from ._model.drugs import DrugInfo as DrugInfo
from ._model.drugs import register_drug as register_drug
from ._model.family import CELLS_PER_MM3 as CELLS_PER_MM3
from ._model.family import ModelConfig as ModelConfig
from ._model.family import initial_state as initial_state
from ._model.family import vector_field as vector_field
from ._model.params import CSCParams as CSCParams
from ._model.params import default_params as default_params
from ._model.pk import OneCompartment as OneCompartment
from ._model.pk import OneCompartmentOral as OneCompartmentOral
from ._model.pk import TwoCompartment as TwoCompartment
from ._model.pk import concentrations as concentrations
from ._model.regimen import DoseLine as DoseLine
from ._model.regimen import DoseSchedule as DoseSchedule
from ._model.regimen import Regimen as Regimen
from ._model.regimen import empty_schedule as empty_schedule
from ._model.regimen import stack_schedules as stack_schedules
from ._model.transforms import Fixed as Fixed
from ._model.transforms import Interval as Interval
from ._model.transforms import ParameterSpace as ParameterSpace
from ._model.transforms import ParamSpec as ParamSpec
from ._model.transforms import Positive as Positive
from ._model.transforms import Real as Real
from ._solve.simulate import Solution as Solution
from ._solve.simulate import simulate as simulate
from ._status import FitStatus as FitStatus
from ._status import Status as Status
from ._trial.endpoints import Endpoints as Endpoints
from ._trial.endpoints import arm_endpoints as arm_endpoints
from ._trial.endpoints import dfs_curve as dfs_curve
from ._trial.endpoints import draw_eta as draw_eta
from ._trial.endpoints import gauss_hermite_eta as gauss_hermite_eta
from ._trial.endpoints import patient_endpoints as patient_endpoints

__version__ = "0.1.0"
