"""The Gradio app: two guidance methods side by side on the same seeds.

`python app/app.py` (or `apg app`) calls `main`; `build_demo()` returns the Blocks for tests and embedding.
Importing this package imports Gradio; `import apg` does not import it.
"""

from .ui import build_demo, launch, main, parse_args

__all__ = ["build_demo", "launch", "main", "parse_args"]
