"""The model: its configuration and vector field, parameters, transforms (the one
parameter-space contract), drugs, PK and regimens. Imports nothing else of fitcsc but
the foundations `fitcsc._errors` and `fitcsc._status`."""
