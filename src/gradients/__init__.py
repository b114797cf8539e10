"""Per-example last-layer gradients and the random projections that compress them.

- ``projectors``: seeded Johnson–Lindenstrauss maps (``GaussianProjector``, ``RademacherProjector``).
- ``head``: closed-form / ``torch.func`` per-example gradients of a linear head, plus a naive reference.
"""
