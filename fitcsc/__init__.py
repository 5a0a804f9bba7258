"""fitcsc: differentiable cancer-stem-cell tumour models with drug PK/PD, in JAX."""

# Fitting needs float64; set FITCSC_FLOAT32=1 before import to keep JAX's default.
import os as _os

import jax as _jax

if _os.environ.get("FITCSC_FLOAT32", "0") != "1":
    _jax.config.update("jax_enable_x64", True)

from ._arms import ARM_EC50_MG_PER_L as ARM_EC50_MG_PER_L
from ._arms import default_arm_regimens as default_arm_regimens
from ._arms import register_arm_drug as register_arm_drug
from ._baselines import BASELINES as BASELINES
from ._baselines import baseline_predictor as baseline_predictor
from ._batch import SubjectBatch as SubjectBatch
from ._batch import make_batch as make_batch
from ._clinical import read_clinical as read_clinical
from ._compile import CompileStats as CompileStats
from ._compile import enable_compile_cache as enable_compile_cache
from ._data import TidyTable as TidyTable
from ._data import data_dir as data_dir
from ._data import read_regimen_table as read_regimen_table
from ._data import read_tidy_csv as read_tidy_csv
from ._data import read_volumes as read_volumes
from ._drug_catalogue import load_drug_catalogue as load_drug_catalogue
from ._drugs import CATALOGUE as CATALOGUE
from ._drugs import DrugInfo as DrugInfo
from ._drugs import register_drug as register_drug
from ._endpoints import Endpoints as Endpoints
from ._endpoints import arm_endpoints as arm_endpoints
from ._endpoints import dfs_curve as dfs_curve
from ._endpoints import draw_eta as draw_eta
from ._endpoints import gauss_hermite_eta as gauss_hermite_eta
from ._endpoints import patient_endpoints as patient_endpoints
from ._errors import CatalogueError as CatalogueError
from ._errors import DataError as DataError
from ._errors import DataWarning as DataWarning
from ._errors import FitcscInputError as FitcscInputError
from ._errors import RegimenError as RegimenError
from ._fit import FitResult as FitResult
from ._fit import fit_map as fit_map
from ._fit_group import GroupFitResult as GroupFitResult
from ._fit_group import fit_groups as fit_groups
from ._fit_predict import AbstractPredictor as AbstractPredictor
from ._fit_predict import CSCPredictor as CSCPredictor
from ._fit_predict import FunctionPredictor as FunctionPredictor
from ._fit_predict import SubjectData as SubjectData
from ._fit_predict import csc_predictor as csc_predictor
from ._fit_predict import subject_data as subject_data
from ._fit_profile import ProfileResult as ProfileResult
from ._fit_profile import profile as profile
from ._fitrun import fit_job as fit_job
from ._likelihood import log_likelihood as log_likelihood
from ._likelihood import log_likelihood_from_log as log_likelihood_from_log
from ._likelihood import residuals as residuals
from ._lm import LeastSquaresResult as LeastSquaresResult
from ._lm import least_squares as least_squares
from ._model import CELLS_PER_MM3 as CELLS_PER_MM3
from ._model import ModelConfig as ModelConfig
from ._model import initial_state as initial_state
from ._model import vector_field as vector_field
from ._nonmem import read_nonmem as read_nonmem
from ._params import CSCParams as CSCParams
from ._params import default_params as default_params
from ._pk import OneCompartment as OneCompartment
from ._pk import OneCompartmentOral as OneCompartmentOral
from ._pk import TwoCompartment as TwoCompartment
from ._pk import concentrations as concentrations
from ._population import PopulationModel as PopulationModel
from ._population import SiteSpace as SiteSpace
from ._population import population_model as population_model
from ._population_csc import baseline_population as baseline_population
from ._population_csc import csc_population as csc_population
from ._regimen import DoseLine as DoseLine
from ._regimen import DoseSchedule as DoseSchedule
from ._regimen import Regimen as Regimen
from ._regimen import empty_schedule as empty_schedule
from ._regimen import stack_schedules as stack_schedules
from ._sample import Posterior as Posterior
from ._sample import sample as sample
from ._sample import z_log_density as z_log_density
from ._simulate import Solution as Solution
from ._simulate import simulate as simulate
from ._status import FitStatus as FitStatus
from ._status import Status as Status
from ._transforms import Fixed as Fixed
from ._transforms import Interval as Interval
from ._transforms import ParameterSpace as ParameterSpace
from ._transforms import ParamSpec as ParamSpec
from ._transforms import Positive as Positive
from ._transforms import Real as Real

__version__ = "0.1.0"
