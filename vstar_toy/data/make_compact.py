"""Regenerate the compact copy shipped in this folder from MiniOneRec's original directory.

    python vstar_toy/data/make_compact.py PATH/TO/amazon18-office vstar_toy/data/amazon18-office.jsonl.gz

PATH/TO/amazon18-office is MiniOneRec's directory of the data set (index/, info/, valid/, test/).

The output is byte-reproducible (gzip without a timestamp); see README.md in this folder.
"""

from __future__ import annotations

import argparse

from vstar_toy.world.amazon import build_world, read_minionerec, write_compact

PROVENANCE = (
    "Amazon Reviews 2018 (McAuley lab, UCSD), Office Products, as preprocessed and published by MiniOneRec "
    "(github.com/AkaliKong/MiniOneRec, commit 81b4ba9, Apache-2.0); ids, SIDs, titles and the valid/test rows only"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a MiniOneRec directory (index/, info/, valid/, test/)")
    ap.add_argument("out", help="the .jsonl.gz file to write")
    ap.add_argument("--provenance", default=PROVENANCE, help="the provenance line stored in the header")
    args = ap.parse_args()
    data = read_minionerec(args.source)
    build_world(data)  # refuse to write a copy that would not load
    out = write_compact(data, args.out, args.provenance)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {len(data.items)} items, "
          + ", ".join(f"{len(r.users)} {s} rows" for s, r in data.splits.items()))


if __name__ == "__main__":
    main()
