"""Publishing: named variants, their evaluation against the base, model cards, Hub upload, and `hfq demo`.

- variants.py: variant names -> what to make (HfqConfig settings or a GGUF file type);
- push.py: make, evaluate and card variants into a local folder, then upload (`hfq push`);
- cards.py: model cards from the templates in model_cards/;
- hub.py: upload a folder as one commit holding only what the Hub lacks;
- demo.py, chart.py: `hfq demo` and its quality-against-size chart.
`import hfq` does not import this package; hfq.make_card and hfq.push_variants load it on first use."""

from .cards import make_card, make_gguf_card, markdown_table
from .push import prepare, push_variants

__all__ = ["make_card", "make_gguf_card", "markdown_table", "prepare", "push_variants"]
