"""``oocstore infer``: full-neighbourhood inference (GraphSAGE, GCN, GAT) over every node
of a store, layer by layer on disk, into a zarr array."""

from __future__ import annotations

from .common import add_flag, add_store, command, size


def add_infer(sub) -> None:
    p = command(sub, "infer", _cmd_infer,
                "logits of a trained GraphSAGE, GCN or GAT for every node (full "
                "neighbourhoods, out of core) into a zarr array")
    add_store(p)
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="the model file `train --save-model` wrote (or a `train --checkpoint` "
                        "DIR)")
    p.add_argument("--out", required=True, metavar="EMB.zarr",
                   help="where to write the [nodes, classes] float32 zarr v3 array")
    p.add_argument("--layer-batch", type=int, default=None, metavar="N",
                   help="at most N destination nodes per chunk (default: as many as "
                        "--cpu-budget allows, else 8192)")
    p.add_argument("--cpu-budget", type=size, default=None, metavar="SIZE",
                   help="memory a chunk's neighbourhood rows and the weights may hold; sizes "
                        "the chunks (refused below the minimum, which it names)")
    p.add_argument("--layers", type=int, default=None, metavar="L",
                   help="refuse a checkpoint that does not have L layers")
    p.add_argument("--plan", default=None,
                   help="refuse a checkpoint whose layer count is not this plan's")
    add_flag(p, "--overwrite", "replace an existing --out zarr array (nothing else)")
    add_flag(p, "--json", "print the summary as one JSON object")
    add_flag(p, "--quiet", "no progress bar")


def _cmd_infer(args) -> int:
    """Run the model in --checkpoint (GraphSAGE, GCN or GAT, as `train --model` built it)
    over all nodes of STORE with full (unsampled) neighbourhoods, one layer at a time:
    each layer reads its input rows in node-order chunks, writes its output for every
    node to a temporary file beside --out, and the next layer reads that file, so memory
    holds one chunk and the weights. The logits are written as a zarr v3 array chunked
    by rows (atomically; an existing --out needs --overwrite). The store is only read;
    features are checksum-checked as they are read."""
    import json

    from ..infer import infer_embeddings
    from ..units import format_size

    bar = None
    state = {"layer": -1}

    def progress(layer: int, layers: int, done: int, total: int) -> None:
        nonlocal bar
        if args.quiet:
            return
        if state["layer"] != layer:
            from tqdm import tqdm

            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=f"layer {layer + 1}/{layers}", unit="node",
                       leave=False)
            state["layer"] = layer
        bar.update(done - bar.n)

    try:
        summary = infer_embeddings(args.store, args.checkpoint, args.out,
                                   layer_batch=args.layer_batch, cpu_budget=args.cpu_budget,
                                   overwrite=args.overwrite, layers=args.layers, plan=args.plan,
                                   progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(summary.to_dict()))
        return 0
    print(f"wrote {summary.out}: [{summary.nodes}, {summary.dims[-1]}] float32 logits of a "
          f"{summary.model}, {len(summary.dims) - 1} layers over {summary.nodes} nodes and "
          f"{summary.edges} edges in {summary.seconds:.1f} s "
          f"({summary.nodes_per_s:,.0f} node-layers/s)")
    print(f"  read {format_size(summary.bytes_read)}, wrote "
          f"{format_size(summary.bytes_written)}; chunks per layer "
          f"{', '.join(map(str, summary.chunks))}; largest chunk "
          f"{format_size(summary.peak_chunk_bytes)}")
    return 0
