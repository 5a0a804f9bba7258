"""Result files (public): the names experiments, benchmarks and user scripts use to write
results the way fitcsc does, and to checkpoint a long run so that it resumes. The one
implementation is `fitcsc._io.files` (and `fitcsc._io.checkpoint`)."""

from ._io.checkpoint import Checkpoint as Checkpoint
from ._io.checkpoint import fingerprint as fingerprint
from ._io.checkpoint import remove as remove_checkpoint
from ._io.files import PACKAGES as PACKAGES
from ._io.files import csv_text as csv_text
from ._io.files import device as device
from ._io.files import precision as precision
from ._io.files import pyplot as pyplot
from ._io.files import run_record as run_record
from ._io.files import save_figure as save_figure
from ._io.files import versions as versions
from ._io.files import write_atomic as write_atomic

__all__ = ["PACKAGES", "Checkpoint", "csv_text", "device", "fingerprint", "precision",
           "pyplot", "remove_checkpoint", "run_record", "save_figure", "versions",
           "write_atomic"]
