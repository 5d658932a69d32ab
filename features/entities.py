"""Feast entities: the keys features are stored and looked up by.

Example:
    >>> from features.entities import experiment_variant_key
    >>> experiment_variant_key("exp1", "B")
    'exp1 B'
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from feast import Entity, ValueType

# A shopper; events carry `user_id`, and retrieval/ranking look users up by it.
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A shopper (user_id).")

# A catalogue item; the item and co-occurrence features are keyed by it.
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="A catalogue item (item_id).")

def bundle_id_for(items: Iterable[str], prefix: str) -> str:
    """The stable id (<= 64 chars) of a bundle made of ``items``: ``<prefix>-`` + the first 16 hex
    of sha1 of the sorted item ids joined by ``\x1f``. Training (bundles mined from the lake) and
    serving (bundles built per request) name the same item set the same way.

    Example:
        >>> bundle_id_for(["b", "a"], "mb") == bundle_id_for(("a", "b"), "mb")
        True
    """
    digest = hashlib.sha1("\x1f".join(sorted(str(i) for i in items)).encode()).hexdigest()[:16]
    return f"{prefix}-{digest}"


# A recommended bundle; the bandit reads its impressions/clicks/purchases.
bundle = Entity(name="bundle", join_keys=["bundle_id"], value_type=ValueType.STRING, description="A bundle (bundle_id).")

# One arm of an online A/B experiment; key built by `experiment_variant_key`.
experiment_variant = Entity(
    name="experiment_variant",
    join_keys=["experiment_variant"],
    value_type=ValueType.STRING,
    description="An (experiment, variant) pair, joined with a space (ids never contain spaces).",
)

ALL_ENTITIES = [user, item, bundle, experiment_variant]


def experiment_variant_key(experiment: str | None, variant: str | None) -> str | None:
    """The join key of an (experiment, variant) pair; None when either is missing.

    Contract ids are printable ASCII without spaces, so the space keeps the pair unambiguous.
    """
    if experiment is None or variant is None:
        return None
    return f"{experiment} {variant}"
