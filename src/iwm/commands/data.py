"""``iwm data pack SOURCE --out DIR``: a data set written as WebDataset shards (iwm.data.pack)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_no_progress


def _pack(args: argparse.Namespace) -> int:
    from ..data.pack import describe, pack

    index = pack(args.source, args.out, args.shard_size, args.seed, progress=not args.no_progress)
    print(f"wrote {args.out}/{{{','.join(index['splits'])}}}-*.tar and index.json")
    for line in describe(index, Path(args.out)):
        print(line)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``data`` (with ``pack``) under the top-level sub-commands."""
    d = subparsers.add_parser("data", help="prepare data: pack images into WebDataset shards")
    dsub = d.add_subparsers(dest="action", required=True)
    p = dsub.add_parser("pack", help="write a class folder or CIFAR-10 as WebDataset shards (data.dataset=webdataset)",
                        description="Write SOURCE's splits as tar shards in the WebDataset layout, in a seeded random "
                                    "order, with index.json (counts and classes) beside them.")
    p.add_argument("source", help="a folder of images (class sub-folders; train/ beside val/ packs both splits), "
                                  "or cifar10 (found as iwm finds it) or cifar10=PATH")
    p.add_argument("--out", required=True, help="empty folder to write the shards into")
    p.add_argument("--shard-size", type=int, default=1000,
                   help="samples per shard (default 1000); write at least processes x loader workers shards")
    p.add_argument("--seed", type=int, default=0, help="seed of the order the samples are written in")
    add_no_progress(p)
    p.set_defaults(fn=_pack)
