"""Stage 3, evaluation: metrics (the paper's weighted F1 and the rest), floors and baselines, bootstrap intervals,
calibration scores, the report, the comparison table and the projector. Reads run directories; never imports train.
"""
