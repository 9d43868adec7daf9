"""What ``oocstore inspect`` shows: a JSON-able summary of a store."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..units import format_size
from ..workingset import recorded_minimum
from .format import FORMAT_VERSION
from .store import Store
from .usage import disk_usage, format_disk_usage


def store_info(store: Store) -> dict[str, Any]:
    arrays = {name: {"dtype": m.dtype, "shape": list(m.shape), "bytes": m.nbytes, "file": m.file,
                     "version": m.version}
              for name, m in sorted(store.arrays.items())}
    info: dict[str, Any] = {
        "path": str(store.path),
        "format_version": FORMAT_VERSION,
        "version": store.version,
        "source": store.meta.source,
        "arrays": arrays,
        "total_bytes": sum(a["bytes"] for a in arrays.values()),
    }
    if store.has_array("features"):
        fm = store.array_meta("features")
        info["num_nodes"] = fm.shape[0]
        info["feat_dim"] = fm.shape[1] if len(fm.shape) > 1 else 1
        info["feat_dtype"] = fm.dtype
        info["feature_bytes"] = fm.nbytes
    if store.has_array("labels"):
        labels = store.array("labels")
        info["num_classes"] = int(labels.max()) + 1 if labels.size else 0
    if store.graph is not None:
        g = store.graph
        indptr, _ = store.csc()
        deg = np.diff(np.asarray(indptr))
        info["num_nodes"] = g.num_nodes
        info["graph"] = {
            "num_nodes": g.num_nodes, "num_edges": g.num_edges, "directed": g.directed,
            "format": "csc",
            "in_degree": {
                "mean": float(deg.mean()) if deg.size else 0.0,
                "max": int(deg.max()) if deg.size else 0,
                "median": float(np.median(deg)) if deg.size else 0.0,
                "p99": float(np.percentile(deg, 99)) if deg.size else 0.0,
                "zero": int((deg == 0).sum()),
            },
        }
    info["splits"] = {k: int(store.array_meta(v).shape[0]) for k, v in sorted(store.splits.items())}
    info["plans"] = plans_info(store)
    info["packs"] = packs_info(store)
    info["disk"] = disk_usage(store)
    if store.get("scene") is not None:
        from ..gs.scene import scene_info  # scenes build on the store, not back

        info["scene"] = scene_info(store)
    return info


def pack_summary(meta, feature_bytes: int) -> dict[str, Any]:
    """The JSON-able summary of one pack (a :class:`~oocstore.pack.format.PackMeta`)."""
    return {"plan": meta.plan, "policy": meta.policy, "gpu_cache_bytes": meta.gpu_rows * meta.row_bytes,
            "cpu_cache_bytes": meta.cpu_rows * meta.row_bytes, "gpu_rows": meta.gpu_rows,
            "cpu_rows": meta.cpu_rows, "segment_batches": meta.segment_batches,
            "segments": meta.num_segments, "packed_rows": meta.packed_rows,
            "packed_bytes": meta.packed_rows * meta.row_bytes,
            "packed_batches": meta.packed_batches, "total_batches": meta.total_batches,
            "packed_epochs": meta.packed_epochs,
            "blowup": meta.blowup, "max_disk_blowup": meta.max_disk_blowup,
            "expected_read_amplification": meta.expected_read_amplification,
            "min_working_set": dict(meta.min_working_set), "feature_bytes": feature_bytes,
            "format_version": meta.format_version}


def packs_info(store: Store) -> dict[str, Any]:
    from ..pack.format import PackMeta  # packs build on the store, not back

    total = store.array_meta("features").nbytes if store.has_array("features") else 0
    return {k[len("pack/"):]: pack_summary(PackMeta.from_dict(v), total)
            for k, v in store.items("pack/") if "/" not in k[len("pack/"):]}


def format_packs(packs: dict[str, Any]) -> list[str]:
    if not packs:
        return []
    lines = [f"  packs ({len(packs)}):"]
    for name, p in packs.items():
        mws = p["min_working_set"]
        floor = recorded_minimum(mws)  # the items of the recorded cpu minimum
        lines.append(f"    {name}: plan {p['plan']}, {p['policy']} tiers: gpu "
                     f"{format_size(p['gpu_cache_bytes'])}, cpu {format_size(p['cpu_cache_bytes'])}; "
                     f"{p['segments']:,} segments of {p['segment_batches']} batch(es) cover "
                     f"{p['packed_batches']:,}/{p['total_batches']:,} batches "
                     f"({p['packed_epochs']} whole epoch(s))")
        lines.append(f"      packed {format_size(p['packed_bytes'])} = {p['blowup']:.2f}x the features "
                     f"(cap {p['max_disk_blowup']:g}x); expected read amplification "
                     f"{p['expected_read_amplification']:.3f}; minimum working set cpu "
                     f"{format_size(floor.total('cpu'))}, gpu {format_size(mws['gpu'])}")
        lines.append(f"      minimum cpu: {floor.describe('cpu')}")
    return lines


def plans_info(store: Store) -> dict[str, Any]:
    """``{name: summary}`` of the store's access plans (see :func:`oocstore.plan.summarize`)."""
    from ..plan import list_plans, summarize  # the plan format builds on the store, not back

    return {name: summarize(meta) for name, meta in sorted(list_plans(store).items())}


def format_plans(plans: dict[str, Any]) -> list[str]:
    """Human lines for the ``plans`` section of :func:`store_info`."""
    if not plans:
        return []
    lines = [f"  plans ({len(plans)}):"]
    for name, p in plans.items():
        st = p["stats"]
        fan = ",".join("all" if f < 0 else str(f) for f in p["fanouts"])
        bpe = p["batches_per_epoch"]
        per = f"{bpe[0]:,}" if len(set(bpe)) == 1 else "/".join(f"{b:,}" for b in bpe)
        lines.append(f"    {name}: split {p['split']}, fanouts {fan}, batch size {p['batch_size']:,}, "
                     f"{p['epochs']} epoch(s) x {per} batches, seed {p['seed']}"
                     f"{', shuffled' if p['shuffle'] else ''} (store v{p['store_version']}, "
                     f"plan format v{p['format_version']}, {p['node_dtype']} ids)")
        if p.get("task") == "link":
            lk = p["link"]
            lines.append(f"      link prediction: batch size counts positive edges, "
                         f"{lk['neg_ratio']} {lk['neg_sampler']} negative(s) per positive; "
                         f"edge split {','.join(f'{f:g}' for f in lk['edge_split'])}")
        uniq = st.get("unique_nodes_per_epoch", [])
        lines.append(f"      per batch: {st['mean_input_nodes']:,.0f} input nodes mean (max "
                     f"{st['max_input_nodes']:,}), {st['mean_edges']:,.0f} edges; per epoch: "
                     + (", ".join(f"{u:,}" for u in uniq) or "-") + " unique nodes")
        lines.append(f"      touches {format_size(st['feature_bytes'])} of features "
                     f"({format_size(st['unique_feature_bytes'])} in {st['unique_nodes']:,} "
                     f"distinct rows; hottest 1% of nodes get {100 * st['top1pct_access_share']:.1f}% "
                     f"of accesses); plan data {format_size(st['data_bytes'])}")
    return lines


def format_info(info: dict[str, Any]) -> str:
    lines = [f"store {info['path']}  (format v{info['format_version']}, version {info['version']})"]
    src = info.get("source") or {}
    if src:
        lines.append("  source: " + ", ".join(f"{k}={v}" for k, v in sorted(src.items())))
    g = info.get("graph")
    if g:
        d = g["in_degree"]
        lines.append(f"  graph: {g['num_nodes']:,} nodes, {g['num_edges']:,} edges "
                     f"({'directed' if g['directed'] else 'undirected'}, CSC); in-degree mean "
                     f"{d['mean']:.2f}, median {d['median']:.0f}, p99 {d['p99']:.0f}, "
                     f"max {d['max']:,}, {d['zero']:,} with none")
    if "feat_dim" in info:
        lines.append(f"  features: {info['num_nodes']:,} x {info['feat_dim']} {info['feat_dtype']} "
                     f"({format_size(info['feature_bytes'])})")
    if "num_classes" in info:
        lines.append(f"  classes: {info['num_classes']}")
    if info.get("splits"):
        lines.append("  splits: " + ", ".join(f"{k} {v:,}" for k, v in info["splits"].items()))
    lines.append(f"  arrays ({format_size(info['total_bytes'])} in all):")
    for name, a in info["arrays"].items():
        if "scene" in info and name.startswith("scene/block/"):
            continue  # summarised in the scene section
        shape = "x".join(str(s) for s in a["shape"])
        lines.append(f"    {name:<24} {a['dtype']:<8} {shape:<18} {format_size(a['bytes']):>11}  {a['file']}")
    lines.extend(format_plans(info.get("plans", {})))
    lines.extend(format_packs(info.get("packs", {})))
    if "disk" in info:
        lines.extend(format_disk_usage(info["disk"]))
    if "scene" in info:
        from ..gs.scene import format_scene_info

        lines.extend(format_scene_info(info["scene"]))
    for section in info.get("extra_sections", []):
        lines.extend(section)
    return "\n".join(lines)
