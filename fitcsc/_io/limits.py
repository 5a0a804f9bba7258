"""Plausibility limits of the data users bring, shared by every reader (documented in
data/README.md, "Your data"). A value beyond a limit is refused with the limit and its
reason; a subject with fewer than `MIN_POINTS_TO_FIT` measurements is kept with a warning.
"""

MAX_ABS_DAY = 3653.0  # 10 years either side of day 0: longer is a unit slip (hours, dates)
MAX_VOLUME_MM3 = 1.0e6  # 1 litre, a 12 cm sphere: larger is a unit slip (um3, cells)
MIN_POINTS_TO_FIT = 3  # a growth curve has >= 3 free parameters (V0, a rate, the error SD)
MAX_DOSES_PER_LINE = 10_000  # 27 years of daily doses
DUPLICATES = ("refuse", "mean", "first", "drop-subject")  # what to do with (subject, day) twins
DUPLICATES_HINT = "--duplicates mean|first|drop-subject (duplicates= in Python)"

DAY_EXPECTED = "a finite number of days (negative = before treatment)"
HORIZON_EXPECTED = f"a day within {MAX_ABS_DAY:g} days (10 years) of day 0"
