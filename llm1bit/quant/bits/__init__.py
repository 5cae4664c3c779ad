"""Mixed-precision bit allocation: the per-layer sensitivity criterion and its measurement, the error fits,
the ILP and the reference's rank rule, and the analysis `llm1bit bits` reports."""
