"""Options of the link tests' template plan (importable by the test modules)."""

#: Options of the template's link plan (``conftest.link_template``).
LINK = dict(fanouts="4,3", batch_size=48, neg_ratio=2, epochs=2, seed=3,
            edge_split="0.7,0.1,0.2", eval_negatives=20)
