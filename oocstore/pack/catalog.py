"""Finding packs in a store: list, load, latest (their metadata: :mod:`.format`).

Plans are found the same way in :mod:`oocstore.plan` (``list_plans``, ``latest_plan``,
and which plan or shard a run uses when none is named).
"""

from __future__ import annotations

from ..errors import StoreNotFoundError, UsageError
from ..store import Store
from .format import PackMeta, pack_key


def list_packs(store: Store) -> dict[str, PackMeta]:
    """Every pack of ``store`` by name."""
    return {k[len("pack/"):]: PackMeta.from_dict(v) for k, v in store.items("pack/")}


def load_pack(store: Store, name: str) -> PackMeta:
    """The metadata of pack ``name``; names the packs there are when it is missing."""
    raw = store.get(pack_key(name))
    if raw is None:
        have = ", ".join(sorted(list_packs(store))) or "none"
        raise StoreNotFoundError(f"store {store.path} has no pack {name!r} (it has: {have}): "
                                 f"create it with `oocstore pack {store.path} --plan ...`")
    return PackMeta.from_dict(raw)


def latest_pack(store: Store, plan: str) -> str:
    """The name of the most recently committed pack made from ``plan``."""
    packs = {n: m for n, m in list_packs(store).items() if m.plan == plan}
    if not packs:
        raise UsageError(f"plan {plan!r} of {store.path} has no pack: create one with "
                         f"`oocstore pack {store.path} --plan {plan} --cpu-budget SIZE`")
    return max(packs, key=lambda n: (store.array_meta(packs[n].arrays["tier"]).version, n))
