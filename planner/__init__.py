"""ftplan's planner: pure-Python memory, fit and time model for LLM fine-tuning.

Never imports torch or transformers (a test checks it); start from
`planner.spec.load_spec` and `planner.estimate.estimate`.
"""
