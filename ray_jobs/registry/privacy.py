"""Deleted users leave the model registry here, in the room that writes it.

The registry's versions are written by training (``ray_jobs``), so the deletion of a user's rows
(``features.registry.privacy.drop_user_rows``: a new version of each model without them) runs
here too, never in a feature pipeline batch. It runs at three places:

* ``streamrec users delete`` (the shell) calls :func:`purge_registry` right after publishing the
  tombstone: the registry is purged immediately;
* every ``streamrec retrain`` check (``ray_jobs.retrain.run_retrain``: ``--watch`` and the
  Kubernetes CronJob) calls :func:`apply_registry_tombstones`, so a deletion that arrived only as
  a tombstone (``DELETE /v1/admin/users/{id}``) reaches the registry at the next check;
* every registration (``ray_jobs.train.register_outcome``) calls :func:`forget_deleted_users`:
  a model trained on a lake snapshot read before a deletion would otherwise bring the user back.

Progress on the tombstone topic is this room's own :class:`~features.privacy.TombstoneLedger`,
``<state_dir>/registry-privacy.json`` (offsets and every deleted user), saved after the purge: a
crash before the save re-reads and re-purges, which finds nothing left to drop (idempotent).

Example:
    >>> from ray_jobs.registry.privacy import apply_registry_tombstones
    >>> from streamrec.runtime.config import get_settings
    >>> apply_registry_tombstones(get_settings()).versions  # doctest: +SKIP
    {'lightgcn_taobao': '20250101T000000000000Z-abc123'}
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from features.privacy import Tombstone, TombstoneLedger, read_tombstones
from features.registry import ModelRegistry
from features.registry.privacy import drop_user_rows

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

__all__ = ["RegistryDeletions", "apply_registry_tombstones", "forget_deleted_users", "ledger_path", "purge_registry"]

logger = logging.getLogger(__name__)

LEDGER_NAME = "registry-privacy.json"


@dataclass(frozen=True)
class RegistryDeletions:
    """What one pass over the tombstone topic did."""

    ledger: TombstoneLedger  # as saved: offsets after this pass, every user deleted so far
    users: frozenset[str]  # the users of the tombstones this pass read
    versions: dict[str, str]  # model name -> its new version without their rows


def ledger_path(settings: Settings) -> Path:
    return settings.data.state_dir / LEDGER_NAME


def purge_registry(settings: Settings, users: Collection[str]) -> dict[str, str]:
    """Drop ``users``' rows from the latest version of every model of the stack's registry
    (``serving.registry_root``, else ``<state_dir>/registry``); model name -> new version."""
    root = settings.registry_root
    # Through the registry's filesystem: ``Path`` would turn an object-store URI into a local path
    # that does not exist, and the purge would silently do nothing. A local root that does not
    # exist yet is not created.
    if not users or ("://" not in root and not Path(root).is_dir()):
        return {}
    changed: dict[str, str] = {}
    for name in ModelRegistry(root).model_names():
        version = drop_user_rows(root, name, set(users))
        if version is not None:
            changed[name] = version
    return changed


def _purge_and_record(settings: Settings, path: Path, ledger: TombstoneLedger, tombstones: list[Tombstone],
                      offsets: dict[int, int]) -> RegistryDeletions:
    """Purge the tombstones' users, then save the ledger (in this order: a crash re-purges)."""
    users = frozenset(t.user_id for t in tombstones)
    versions = purge_registry(settings, users)
    if offsets != ledger.offsets:
        ledger.record(tombstones, offsets)
        ledger.save(path)
    if versions:
        logger.info("registry purge of %d deleted users: %s", len(users), versions,
                    extra={"users": len(users), "versions": versions})
    return RegistryDeletions(ledger, users, versions)


def apply_registry_tombstones(settings: Settings) -> RegistryDeletions:
    """Read the tombstones since this room's ledger, drop their users from the registry, save.

    Raises:
        kafka.errors.KafkaError: the broker cannot be reached (nothing is purged or saved).
    """
    path = ledger_path(settings)
    ledger = TombstoneLedger.load(path)
    tombstones, offsets = read_tombstones(settings, ledger.offsets)
    return _purge_and_record(settings, path, ledger, tombstones, offsets)


def forget_deleted_users(settings: Settings, registry_root: str, name: str, version: str,
                         model_users: Collection[str]) -> str:
    """The registration step: drop every deleted user (the ledger's, after new tombstones) from
    ``name``'s ``version``, just registered under ``registry_root`` (``LATEST`` not yet moved),
    move ``LATEST`` to it or to its copy without them, then apply the new tombstones to the rest
    of the registry.

    A broker that cannot be reached within ``kafka.metadata_timeout_s`` does not fail the
    registration: the users already in the ledger are dropped, with a warning (the next retrain
    check or registration reads the rest).

    Args:
        model_users: the raw user ids of the new version's ``user`` rows (``ids.user``).

    Returns:
        The version now ``LATEST``: ``version``, or its copy without the deleted users it held.
    """
    from kafka.errors import KafkaError

    if not model_users:  # no user rows: nothing to drop, and no reason to reach the broker
        ModelRegistry(registry_root).set_latest(name, version)
        return version
    path = ledger_path(settings)
    ledger = TombstoneLedger.load(path)
    try:
        tombstones, offsets = read_tombstones(settings, ledger.offsets, settings.kafka.metadata_timeout_s)
    except KafkaError as exc:
        logger.warning("tombstones unreadable (%s): dropping only the %d users already in %s from %s",
                       exc, len(ledger.deleted), path, name, extra={"model": name})
        tombstones, offsets = [], ledger.offsets
    deleted = set(ledger.deleted) | {t.user_id for t in tombstones}
    present = deleted.intersection(model_users)
    copy = drop_user_rows(registry_root, name, present, version) if present else None
    if copy is None:
        ModelRegistry(registry_root).set_latest(name, version)
    else:
        logger.info("dropped %d deleted users from %s (now %s)", len(present), name, copy,
                    extra={"model": name, "version": copy, "users": len(present)})
    # LATEST of this model holds none of them now, so this purges only the other models.
    _purge_and_record(settings, path, ledger, tombstones, offsets)
    return copy or version
