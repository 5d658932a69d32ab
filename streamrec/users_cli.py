"""``streamrec users delete <user_id> [--reason ...]``: user deletion across every store, which is
why it is the shell's; ``register(subparsers)`` adds it to ``streamrec``.

Publishes the user's tombstone (``acks=all``), then purges the event lake, Feast offline and online,
the feature pipeline's state and the model registry's user embeddings in this process, and prints
rows removed per store. Stages that run elsewhere (the bandit learner in Serve, a pipeline in
``--follow``) act on the tombstone when they read it.
"""

from __future__ import annotations

import argparse
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings


def cmd_users_delete(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.privacy import delete_user

    tombstone, summary = delete_user(settings, args.user_id, reason=args.reason, source="cli")
    print(
        f"users delete {tombstone.user_id}: tombstone {tombstone.request_id} published to "
        f"{settings.kafka.topics.tombstones} (acks=all)",
        flush=True,
    )
    rows = summary.as_table()
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
