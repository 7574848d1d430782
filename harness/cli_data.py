"""The data-preparation commands: ``harness shards`` (real images into shards), ``harness negatives``
(NegLabel's / CSP's candidate pools) and ``harness cache`` (the shared embedding cache).

harness.cli dispatches to them; a refused input raises UsageError, which it reports (exit code 2).
"""

from __future__ import annotations

from harness.cli_parser import UsageError


def shards(args) -> int:
    from harness.data import writers

    try:
        names = writers.read_classnames(args.classnames) if args.classnames else []
        kind = args.kind or ("id" if names or args.source == "imagefolder" else "ood")
        if args.source == "index":
            writers.index_shards(args.out, args.name, kind, names)
            return 0
        for option in ("shard_size", "workers"):
            if getattr(args, option) < 1:
                raise UsageError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
        if args.resize is not None and args.resize < 1:
            raise UsageError(f"--resize must be >= 1, got {args.resize}")
        holdout = None
        if args.source == "imagefolder":
            items, found = writers.imagefolder_items(args.src)
            names = names or found
            if (args.holdout_per_class is None) != (args.holdout_out is None):
                raise UsageError("--holdout-per-class and --holdout-out go together")
            if args.holdout_per_class is not None:
                if not writers.valid_name(args.holdout_out.name):
                    raise UsageError(f"--holdout-out {args.holdout_out}: its folder name is the dataset name; use "
                                     "letters, digits, '-' and '_' only")
                items, holdout = writers.split_holdout(items, args.holdout_per_class)
        elif args.source == "imagelist":
            items = writers.imagelist_items(args.src, args.root)
        else:
            items = writers.mos_items(args.src)
        writers.write_items(items, args.out, args.name, kind, names, args.shard_size, args.resize, args.workers,
                            args.address)
        if holdout:
            writers.write_items(holdout, args.holdout_out, args.holdout_out.name, kind, names, args.shard_size,
                                args.resize, args.workers, args.address)
    except writers.SourceError as err:
        raise UsageError(str(err)) from None
    return 0


def negatives(args) -> int:
    """Checks every input before the model is built, then writes the candidates and the mined list."""
    from harness.orchestration import preflight

    from harness import wordnet
    from harness.data import writers
    from harness.negatives import mine_to_file

    if not 0 <= args.percentile <= 100:
        raise UsageError(f"--percentile must be in [0, 100], got {args.percentile}")
    if not 0 < args.ratio <= 1:
        raise UsageError(f"--ratio must be in (0, 1], got {args.ratio}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    for key in ("eval_prompt", "noun_prompt", "adjective_prompt"):
        if getattr(args, key).count("{}") != 1:
            raise UsageError(f"--{key.replace('_', '-')} must contain exactly one '{{}}' placeholder")
    pretrained = None if args.pretrained in (None, "none", "null") else args.pretrained
    try:
        names = writers.read_classnames(args.classnames)
        preflight.check_model_weights(args.arch, pretrained, field="--pretrained")
        selection = wordnet.select(args.wordnet, exclude=names, mode=args.mode)
    except (writers.SourceError, wordnet.WordNetError) as err:
        raise UsageError(str(err)) from None
    candidates = selection.candidates
    if args.limit is not None:
        candidates = [c for kind in ("noun", "adj") for c in [c for c in candidates if c.kind == kind][:args.limit]]
    if args.mode == "csp":  # CSP's pool: the nouns, and one "<adjective> <superclass>" phrase per adjective
        from harness.negatives import csp_pool

        candidates = csp_pool(candidates, args.csp_seed)
    provenance = {"wordnet_dir": str(args.wordnet.resolve()), "wordnet_version": "3.0", "mode": args.mode,
                  "selection": ("nouns: noun.* except noun.animal, noun.food, noun.group, noun.person, noun.quantity; "
                                "adjectives: adj.all, adj.ppl" if args.mode == "csp" else
                                "nouns: noun.* except noun.animal, noun.food; adjectives: adj.all, adj.pert, adj.ppl")
                               + "; the first lemma of each synset, de-duplicated, ID class names dropped",
                  "counts": selection.counts, "limit": args.limit, "classnames": args.classnames,
                  **({"csp_seed": args.csp_seed} if args.mode == "csp" else {})}
    cand_path = args.out.with_name(args.out.name + ".candidates.tsv")
    wordnet.write_candidates(candidates, cand_path, header=[f"NegLabel candidates from WordNet 3.0 at {args.wordnet}"])
    record = mine_to_file(candidates, names, args.out, args.arch, pretrained, args.percentile, args.ratio,
                          args.eval_prompt, args.noun_prompt, args.adjective_prompt, provenance,
                          args.batch_size, args.device, csp=args.mode == "csp")
    print(f"candidates: {record['candidates']} -> {cand_path}\nmined:      {record['mined']} -> {args.out}\n"
          f"use it: --set eval.{'csp_negatives' if args.mode == 'csp' else 'negatives'}={args.out.resolve()}")
    return 0


def cache(args) -> int:
    from harness.evaluation import embed_cache

    root = (args.cache or embed_cache.default_root()).expanduser().resolve()
    if args.action == "size":
        sizes = embed_cache.sizes(root)
        for digest, (count, size) in sizes.items():
            print(f"{digest}  {count:5d} entries  {size / 2**20:10.1f} MiB")
        print(f"total {sum(c for c, _ in sizes.values())} entries, "
              f"{sum(s for _, s in sizes.values()) / 2**20:.1f} MiB in {root}")
        return 0
    removed, freed = embed_cache.prune(root, args.older_than_days)
    print(f"pruned {removed} entries ({freed / 2**20:.1f} MiB) from {root}")
    return 0
