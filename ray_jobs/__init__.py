"""Offline training jobs for streamrec: data adapters, models, Ray Train trainers, evaluation, registry.

Subpackages:
    data: dataset adapters returning :class:`ray_jobs.data.InteractionData`.
    evaluation: pure metric functions and evaluation protocols.
    models: one ``nn.Module`` per file, each with a YAML of defaults beside it.
    trainers: the Ray Train worker loop and the launcher helpers.
    registry: versioned model registry with an atomic ``latest`` pointer.
"""

__all__: list[str] = []
