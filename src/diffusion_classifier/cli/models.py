"""`diffusion-classifier models`: the model families this version loads and the short names (aliases) users type."""

from __future__ import annotations

import argparse

from .rules import print_json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the supported model families and the short model names (aliases)",
        description="The model families --model is detected as, with the load options each takes, and the short "
        "names (aliases) that stand for hub ids.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import model_catalog

    catalog = model_catalog()
    if args.json:
        print_json(catalog)
        return 0
    print("families (--model FOLDER_OR_HUB_ID is detected as one of these):")
    for f in catalog["families"]:
        options = ", ".join("--" + o.replace("_", "-") for o in f["options"])
        print(f"  {f['name']:<18} {f['description']}" + (f"  [{options}]" if options else ""))
    print("aliases (--model NAME):")
    for a in catalog["aliases"]:
        status = "" if a["supported"] else "  (not supported yet)"
        print(f"  {a['name']:<14} {a['hub_id']:<50} {a['family']:<17} {a['note']}{status}")
    return 0
