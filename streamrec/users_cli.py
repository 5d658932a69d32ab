"""``streamrec users delete <user_id> [--reason ...]``: user deletion across every store, which is
why it is the shell's (it composes two stages); ``register(subparsers)`` adds it to ``streamrec``.

Publishes the user's tombstone (``acks=all``), then purges in this process the feature pipeline's
stores (event lake, Feast offline and online, pipeline state: ``pipelines.privacy``) and the model
registry's user embeddings (``ray_jobs.registry.privacy``), and prints rows removed per store.
Stages that run elsewhere act on the tombstone when they read it: the bandit learner in Serve, a
pipeline in ``--follow`` at its next micro-batch, training at its next retrain check or
registration (each re-purges idempotently, in case it wrote the user back meanwhile).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:
    from features.privacy import Tombstone
    from pipelines.privacy import PurgeSummary
    from streamrec.runtime.config import Settings


@dataclass(frozen=True)
class Deletion:
    """What ``users delete`` did: the tombstone, the pipeline's purge and the registry's."""

    tombstone: Tombstone
    stores: PurgeSummary
    registry_versions: dict[str, str]  # model name -> new version without the user's rows

    def as_table(self) -> dict[str, str]:
        """Store -> what was removed, as the command prints it."""
        models = ", ".join(f"{m} -> {v}" for m, v in self.registry_versions.items()) or "no user rows"
        return {**self.stores.as_table(), "model registry": models}


def delete_user(settings: Settings, user_id: str, reason: str, source: str = "cli") -> Deletion:
    """Publish the tombstone first (so every stage that runs concurrently drops the user from then
    on), then purge the pipeline's stores and the registry now."""
    from features.privacy import Tombstone, publish_tombstone
    from pipelines.privacy import purge_users
    from ray_jobs.registry.privacy import purge_registry

    tombstone = Tombstone.for_user(user_id, reason=reason, source=source)
    publish_tombstone(settings, tombstone)
    return Deletion(tombstone, purge_users(settings, {user_id}), purge_registry(settings, {user_id}))


def cmd_users_delete(args: argparse.Namespace, settings: Settings) -> int:
    deletion = delete_user(settings, args.user_id, reason=args.reason, source="cli")
    print(
        f"users delete {deletion.tombstone.user_id}: tombstone {deletion.tombstone.request_id} published to "
        f"{settings.kafka.topics.tombstones} (acks=all)",
        flush=True,
    )
    rows = deletion.as_table()
    rows["kafka events"] = "kept by the broker (no delete); every consumer drops the user from the tombstone on"
    rows["bandit learner"] = "forgets the user when it reads the tombstone"
    width = max(len(k) for k in rows)
    for store, what in rows.items():
        print(f"  {store.ljust(width)}  {what}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``users delete`` to a ``streamrec`` argparse subparsers object."""
    users = subparsers.add_parser("users", help="user data (privacy)").add_subparsers(dest="action", required=True)
    delete = users.add_parser("delete", help="remove a user from every store and publish a tombstone")
    delete.add_argument("user_id", help="the user id, as events carry it")
    delete.add_argument("--reason", default="user_request", help="recorded in the tombstone (default: user_request)")
    delete.set_defaults(func=cmd_users_delete)
