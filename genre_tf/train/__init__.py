"""Stage 4, training: the loop, its callbacks and losses, late fusion, calibration fitted on dev, multi-worker runs,
and the tools that rewrite a finished run (recalibrate, migrate). May use every stage below it except serve.
"""
