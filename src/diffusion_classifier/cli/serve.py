"""`diffusion-classifier serve`: the web page (web/) around one loaded model, on a local port."""

from __future__ import annotations

import argparse

from .options import add_model_options, int_in_range, load_classifier

DEFAULT_MODEL = "builtin:mnist"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="a web page to classify images and watch the race (Gradio)",
        description="Loads the model once and serves a page where you upload or draw an image, type labels or "
        "pick a preset, and watch the labels race. Needs the web extra: pip install 'diffusion-classifier[web]'.",
    )
    add_model_options(p, required=False)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_arg, default=7860, help="port, 1..65535 (default 7860)")
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link (internet)")
    p.set_defaults(func=run, model=DEFAULT_MODEL)


def port_arg(value: str) -> int:
    """--port: a TCP port (0, "any free port", is not offered: the page's address would be unknown)."""
    return int_in_range(value, 1, 65535, "a port number 1..65535")


def run(args: argparse.Namespace) -> int:
    from ..web import require_gradio, serve

    require_gradio()  # before the model loads
    serve(load_classifier(args), host=args.host, port=args.port, share=args.share, model_name=args.model)
    return 0
