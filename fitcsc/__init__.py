"""fitcsc: differentiable cancer-stem-cell tumour models with drug PK/PD, in JAX."""

# Fitting needs float64; set FITCSC_FLOAT32=1 before import to keep JAX's default.
import os as _os

import jax as _jax

if _os.environ.get("FITCSC_FLOAT32", "0") != "1":
    _jax.config.update("jax_enable_x64", True)

from ._drugs import CATALOGUE as CATALOGUE
from ._drugs import DrugInfo as DrugInfo
from ._drugs import register_drug as register_drug
from ._errors import DataError as DataError
from ._errors import FitcscInputError as FitcscInputError
from ._errors import RegimenError as RegimenError
from ._model import CELLS_PER_MM3 as CELLS_PER_MM3
from ._model import ModelConfig as ModelConfig
from ._model import initial_state as initial_state
from ._model import vector_field as vector_field
from ._params import CSCParams as CSCParams
from ._params import default_params as default_params
from ._pk import OneCompartment as OneCompartment
from ._pk import OneCompartmentOral as OneCompartmentOral
from ._pk import TwoCompartment as TwoCompartment
from ._pk import concentrations as concentrations
from ._regimen import DoseLine as DoseLine
from ._regimen import DoseSchedule as DoseSchedule
from ._regimen import Regimen as Regimen
from ._regimen import empty_schedule as empty_schedule
from ._regimen import stack_schedules as stack_schedules
from ._simulate import Solution as Solution
from ._simulate import Status as Status
from ._simulate import simulate as simulate
from ._transforms import Fixed as Fixed
from ._transforms import Interval as Interval
from ._transforms import ParamSpec as ParamSpec
from ._transforms import Positive as Positive
from ._transforms import Real as Real

__version__ = "0.1.0"
