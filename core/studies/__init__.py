"""Dataset-level studies and their tables: robustness sweeps, model comparison, distribution shift, transfer,
embeddings, the explanation audit, the paper check, head layer studies, reports.

May import every wing below it (io, models, attacks, training, field); never the API or the CLI. A study
receives a model and computes through its public methods only (``forward``, ``forward_all``, ``embed``, ...).
"""
