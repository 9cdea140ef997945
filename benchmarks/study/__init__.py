"""The compression study: teachers, same-budget controls and compressed models on real cases, scored per
patient with patient-level k-fold, with CIs, tests, cost, layer similarity and one report.

``python -m benchmarks.study --data DIR --plan benchmarks/study/plans/cpu.json`` (see :mod:`.runner`).
"""
