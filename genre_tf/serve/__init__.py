"""Stage 3, serving: the SavedModel export and its signatures, predict, Beam batch scoring and explanations. Reads
run directories and exports; never imports train or evaluate.
"""
