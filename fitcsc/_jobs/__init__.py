"""Jobs: `fitcsc fit` (one fit job), `fitcsc run` (the main job), `fitcsc simulate`,
`fitcsc predict`, `fitcsc sample`, their plots and reports, run configurations and
the compilation cache."""
