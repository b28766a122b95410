"""The web page (`diffusion-classifier serve`): build_demo(classifier) returns a Gradio Blocks app; serve() runs it.

Gradio is an optional dependency (pip install "diffusion-classifier[web]"); analytics stay off, and the page
loads nothing from the internet (its fonts and scripts come from the local Gradio package).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import UserInputError

if TYPE_CHECKING:
    import gradio as gr

    from ..pipeline import DiffusionClassifier

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: set before


def require_gradio() -> None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserInputError('the web page needs Gradio: pip install "diffusion-classifier[web]"') from None


def build_demo(classifier: DiffusionClassifier, title: str = "Diffusion Classifier", model_name: str = "") -> gr.Blocks:
    """The page around one loaded classifier, as a gr.Blocks app (queued; mount it or launch it)."""
    require_gradio()
    from .app import build_demo as build

    return build(classifier, title, model_name)


def serve(
    classifier: DiffusionClassifier,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    model_name: str = "",
) -> None:
    """Serve the page of a loaded classifier until interrupted (share: also through a public Gradio link)."""
    demo = build_demo(classifier, model_name=model_name)
    demo.launch(server_name=host, server_port=port, share=share, ssr_mode=False, mcp_server=False)


__all__ = ["build_demo", "serve"]
