"""Typed neighbourhood sampling into a heterogeneous plan.

Seeds are nodes of one labelled type. Layers are sampled from the seeds outwards, as in
:mod:`oocstore.samplers.neighbor`: at each layer, for every relation ``(src, rel, dst)``
in sorted order, up to ``fanout[rel][layer]`` in-neighbours (without replacement) of
every ``dst`` node reached so far are drawn from that relation's CSC, and new ``src``
nodes are appended to their type's list. Nodes are numbered per type in order of first
appearance (seeds first), so every layer's destinations of a type are a prefix of that
type's sources, and one input list per type serves all layers (DGL's block convention,
per type). Draws are the homogeneous sampler's counter-based hashes of ``(seed, epoch,
batch, layer * 1024 + relation index, node)`` (its numba kernels), and the epoch's seed
order is a generator seeded with ``(seed, epoch)``: a plan is a function of its options.

The plan (the typed plan and one feature plan per feature-bearing type, written in one
transaction) is laid out as :mod:`oocstore.hetero.plan` describes.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from oocstore.errors import ChecksumError, StoreExistsError, UsageError
from oocstore.plan import PLAN_FORMAT_VERSION, PlanWriter, check_plan_name, node_dtype_for
from oocstore.samplers.neighbor import (_SHUFFLE_SALT, _sample_relation, _slot, _table_size,
                                        parse_fanouts)
from oocstore.store import Store

from .plan import HPLAN_FORMAT_VERSION, hplan_key, schema_fingerprint
from .schema import EdgeType, HeteroSchema, csc_names, edge_key, require_schema, split_name

log = logging.getLogger(__name__)


def parse_hetero_fanouts(value: str | Sequence[int] | Mapping[str, Any],
                         relations: Sequence[EdgeType]) -> dict[EdgeType, tuple[int, ...]]:
    """Fanouts per relation, input-side layer first.

    ``"10,5"`` (or ``[10, 5]``): the same for every relation. ``"writes=10,5;cites=5,3"``
    (or a dict): one entry per relation, keyed by its name (when unique) or its full
    ``src___rel___dst`` key; every relation must be given, with the same layer count."""
    if isinstance(value, str) and "=" not in value or isinstance(value, (list, tuple)):
        fo = parse_fanouts(value)
        return {et: fo for et in relations}
    if isinstance(value, str):
        items = {}
        for part in value.split(";"):
            if not part.strip():
                continue
            k, _, v = part.partition("=")
            items[k.strip()] = v.strip()
    else:
        items = dict(value)
    by_name: dict[str, list[EdgeType]] = {}
    for et in relations:
        by_name.setdefault(et[1], []).append(et)
        by_name.setdefault(edge_key(et), []).append(et)
    out: dict[EdgeType, tuple[int, ...]] = {}
    for k, v in items.items():
        ets = by_name.get(k)
        if ets is None:
            raise UsageError(f"fanouts={value!r}: {k!r} is not a relation of this store (its "
                             f"relations: {', '.join(edge_key(e) for e in relations)})")
        if len(ets) > 1:
            raise UsageError(f"fanouts={value!r}: relation name {k!r} is ambiguous; use one of "
                             f"{', '.join(edge_key(e) for e in ets)}")
        out[ets[0]] = parse_fanouts(v)
    missing = [edge_key(et) for et in relations if et not in out]
    if missing:
        raise UsageError(f"fanouts={value!r} gives no fanouts for relation(s) "
                         f"{', '.join(missing)}: give every relation (REL=F0,F1;...) or one "
                         "list for all (e.g. fanouts='10,5')")
    layers = {len(f) for f in out.values()}
    if len(layers) != 1:
        raise UsageError(f"fanouts={value!r}: relations give different numbers of layers "
                         f"({sorted(layers)}): give each relation one fanout per layer")
    return out


def sample_hetero_batch(cscs: dict[EdgeType, tuple[np.ndarray, np.ndarray]],
                        types: Sequence[str], relations: Sequence[EdgeType], target: str,
                        seeds: np.ndarray, fanouts: np.ndarray, seed: int, epoch: int,
                        batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample one batch; returns ``(record, index row without offset/length)`` laid out
    as in the module docstring. ``fanouts``: ``[L, R]`` int64."""
    num_layers = fanouts.shape[0]
    state = {}
    for t in types:
        state[t] = [np.empty(16, np.int64), np.full(64, -1, np.int64), np.empty(64, np.int64), 0]
    st = state[target]
    st[0] = np.ascontiguousarray(seeds, dtype=np.int64).copy()
    st[1] = np.full(_table_size(max(16, seeds.size)), -1, np.int64)
    st[2] = np.empty(st[1].shape[0], np.int64)
    for i, s in enumerate(st[0]):
        slot = _slot(st[1], s)
        st[1][slot] = s
        st[2][slot] = i
    st[3] = int(seeds.size)
    picked = np.empty(max(1, int(fanouts.max())), np.int64)
    layer_rows, layer_edges = [], []
    for layer in range(num_layers - 1, -1, -1):
        n_dst = {t: state[t][3] for t in types}
        edges = []
        for ri, et in enumerate(relations):
            s, _, d = et
            if n_dst[d] == 0:
                edges.append((np.empty(0, np.int64), np.empty(0, np.int64)))
                continue
            indptr, indices = cscs[et]
            ss = state[s]
            ss[0], ss[1], ss[2], ss[3], src, dst = _sample_relation(
                indptr, indices, state[d][0], n_dst[d], ss[0], ss[1], ss[2], ss[3],
                int(fanouts[layer, ri]), picked, np.uint64(seed), np.int64(epoch),
                np.int64(batch), np.int64(layer * 1024 + ri))
            edges.append((src, dst))
        sizes = []
        for t in types:
            sizes += [state[t][3], n_dst[t]]
        layer_rows.append(sizes + [e[0].size for e in edges])
        layer_edges.append(edges)
    layer_rows.reverse()
    layer_edges.reverse()
    row = [int(seeds.size)] + [state[t][3] for t in types] + [v for r in layer_rows for v in r]
    parts = [state[t][0][:state[t][3]] for t in types]
    for edges in layer_edges:
        for src, dst in edges:
            parts += [src, dst]
    return np.concatenate(parts).astype(np.int64), np.asarray(row, dtype=np.int64)


def sample_hetero_plan(store: Store, *, fanouts, batch_size: int, epochs: int | None = None,
                       seed: int = 0, name: str | None = None, split: str = "train",
                       target: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Sample ``epochs`` epochs of ``split`` of the ``target`` type (default: the store's
    target) into plan ``name`` (default: the split) in one transaction. The training split
    is shuffled per epoch (4 epochs by default), others are sampled in order (1 epoch)."""
    schema = require_schema(store)
    target, fo, epochs, name, shuffle = _check_options(
        store, schema, target=target or schema.target, split=split, fanouts=fanouts,
        batch_size=batch_size, epochs=epochs, seed=seed, name=name, overwrite=overwrite)
    relations = schema.relations
    num_layers = len(next(iter(fo.values())))
    fan = np.asarray([[fo[et][layer] for et in relations] for layer in range(num_layers)],
                     dtype=np.int64)
    types = schema.type_names
    _verify_relations(store, schema, target, split)
    cscs = {et: (store.array(csc_names(et)[0]), store.array(csc_names(et)[1]))
            for et in relations}
    seeds = np.asarray(store.array(split_name(target, split)), dtype=np.int64)
    counts = {t: np.zeros(schema.node_types[t].count, np.int32) for t in types
              if schema.node_types[t].has_features}
    per_epoch = -(-seeds.size // batch_size)
    arrays = {"data": f"hplan/{name}/data", "index": f"hplan/{name}/index",
              **{f"counts/{t}": f"hplan/{name}/counts/{t}" for t in counts}}
    feature_plans = {t: check_plan_name(f"{name}.{t}") for t in counts}
    fingerprint = schema_fingerprint(store, schema)
    with store.transaction() as txn:
        base = dict(split=split, fanouts=(), batch_size=int(batch_size), epochs=int(epochs),
                    seed=int(seed), shuffle=shuffle, num_seeds=int(seeds.size), num_edges=0,
                    store_version=store.version, graph_fingerprint=fingerprint,
                    format_version=PLAN_FORMAT_VERSION)
        writers = {t: _feature_plan_writer(txn, schema, t, feature_plans[t], name, base)
                   for t in counts}
        w_data = txn.array_writer(arrays["data"], np.int64, (), subdir="plans")
        rows, offset = [], 0
        for epoch in range(epochs):
            order = (np.random.default_rng([seed, epoch, _SHUFFLE_SALT]).permutation(seeds)
                     if shuffle else seeds)
            for w in writers.values():
                w.begin_epoch()
            for b in range(per_epoch):
                rec, row = sample_hetero_batch(cscs, types, relations, target,
                                               order[b * batch_size:(b + 1) * batch_size],
                                               fan, seed, epoch, b)
                pos = 0
                for ti, t in enumerate(types):
                    n = int(row[1 + ti])
                    if t in counts:
                        counts[t][rec[pos:pos + n]] += 1
                        writers[t].add_batch(rec[pos:pos + n], np.zeros((0, 3), np.int64), n)
                    pos += n
                w_data.append(rec)
                rows.append(np.concatenate([[offset, rec.size], row]))
                offset += rec.size
        w_data.close()
        for w in writers.values():
            w.finish()
        index = np.stack(rows).astype(np.int64)
        txn.write_array(arrays["index"], index, subdir="plans")
        for t, c in counts.items():
            txn.write_array(arrays[f"counts/{t}"], c, subdir="plans")
        meta = {"format_version": HPLAN_FORMAT_VERSION, "name": name, "split": split,
                "target": target, "types": types, "relations": [edge_key(e) for e in relations],
                "fanouts": {edge_key(e): list(fo[e]) for e in relations},
                "num_layers": num_layers, "batch_size": int(batch_size), "epochs": int(epochs),
                "seed": int(seed), "shuffle": shuffle, "num_seeds": int(seeds.size),
                "batches_per_epoch": [per_epoch] * epochs, "arrays": arrays,
                "store_version": store.version + 1, "feature_plans": feature_plans,
                "fingerprint": fingerprint,
                "stats": _plan_stats(index, types, schema)}
        txn.put(hplan_key(name), meta)
    log.info("sampled hetero plan %r: %d epoch(s) x %d batch(es)", name, epochs, per_epoch)
    return meta


def _feature_plan_writer(txn, schema: HeteroSchema, ntype: str, plan: str, hplan: str,
                         base: dict) -> PlanWriter:
    """The writer of type ``ntype``'s feature plan (module docstring)."""
    nt = schema.node_types[ntype]
    return PlanWriter(txn, dict(base, name=plan, node_dtype=node_dtype_for(nt.count).name,
                                num_nodes=nt.count,
                                sampler=f"hetero plan {hplan!r}, node type {ntype!r}"),
                      feature_row_bytes=nt.feat_dim * np.dtype(nt.dtype).itemsize)


def _check_options(store: Store, schema: HeteroSchema, *, target: str, split: str, fanouts,
                   batch_size, epochs, seed, name, overwrite: bool):
    """Every option of :func:`sample_hetero_plan` checked against the store (reads no graph
    data); returns ``(target, fanouts per relation, epochs, name, shuffle)``."""
    if target not in schema.node_types:
        raise UsageError(f"target={target!r} is not a node type of store {store.path} (it has: "
                         f"{', '.join(schema.type_names)}): choose one of those")
    nt = schema.node_types[target]
    if not nt.has_labels:
        labelled = [t for t in schema.type_names if schema.node_types[t].has_labels]
        raise UsageError(f"target={target!r}: node type {target!r} has no labels, so its nodes "
                         f"cannot be seeds (labelled types: {', '.join(labelled) or 'none'})")
    if split not in nt.splits:
        raise UsageError(f"split={split!r}: node type {target!r} has no such split (it has: "
                         f"{', '.join(nt.splits) or 'none'})")
    fo = parse_hetero_fanouts(fanouts, schema.relations)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UsageError(f"batch_size={batch_size!r} is not an integer >= 1: give the number of "
                         "seed nodes per batch, e.g. batch_size=512")
    shuffle = split == "train"
    epochs = (4 if shuffle else 1) if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise UsageError(f"epochs={epochs!r} is not an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise UsageError(f"seed={seed!r}: give a non-negative integer below 2**63")
    name = check_plan_name(name if name is not None else split)
    if store.get(hplan_key(name)) is not None and not overwrite:
        raise StoreExistsError(f"store {store.path} already has a plan {name!r}: pass "
                               "overwrite=True to replace it, or choose another name")
    return target, fo, int(epochs), name, shuffle


def _verify_relations(store: Store, schema: HeteroSchema, target: str, split: str) -> None:
    """Check the checksums of every relation's CSC and of the seed split before sampling."""
    from oocstore.store.verify import verify_arrays

    names = [n for et in schema.relations for n in csc_names(et)] + [split_name(target, split)]
    damage = verify_arrays(store, names)
    if damage:
        raise ChecksumError(f"store {store.path}: {damage[0]} ({len(damage)} damaged chunk(s) in "
                            "the arrays sampling reads): restore the store from a copy or "
                            "re-create it; `oocstore verify` lists every damage")


def _plan_stats(index: np.ndarray, types: Sequence[str], schema: HeteroSchema) -> dict:
    """Mean input rows per batch and type, and the feature bytes they are."""
    out = {}
    for ti, t in enumerate(types):
        mean = float(index[:, 3 + ti].mean()) if index.size else 0.0
        nt = schema.node_types[t]
        rb = nt.feat_dim * np.dtype(nt.dtype).itemsize if nt.has_features else 0
        out[t] = {"mean_input": round(mean, 2), "mean_feature_bytes": round(mean * rb, 1)}
    return out
