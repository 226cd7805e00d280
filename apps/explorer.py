"""V-STAR explorer: see the paper's claims on one synthetic world, one user at a time.

    make app                       # or: streamlit run apps/explorer.py (from the repository root, whose
                                   # .streamlit/config.toml binds 127.0.0.1 with usage statistics off)
    VSTAR_TOY_APP_PRESET=tiny make app

Pages (one module each in ``explorer_pages/``, each a ``page(settings)`` function):

- World: the SID tree, popularity against one user's true reward, and the mismatch knob (Sec. 3.2).
- Decoding: beam search and VED side by side under one budget (Sec. 4.2).
- Advantages: GRPO against Sibling-GRPO node advantages, Eq. 4 and Samuelson's bound (Sec. 3.2, 4.3).
- Training: a short run of the self-evolving loop with live curves, or saved run directories side by
  side (Sec. 4.4).

A page reads the sidebar's :class:`explorer_pages.common.Settings`, draws its widgets in a
``*_ui()`` function that returns plain values, gets every number from a cached library call in its
``explorer_pages/<page>_data.py`` (what all pages share, the world and the models, in ``data.py``),
and draws with ``vstar_toy.plots``. Adding a page is one module, its data module and one line in
``PAGES``. ``?page=decoding`` in the URL opens a page directly.
"""

from __future__ import annotations

import streamlit as st
from explorer_pages import advantages, decoding, training, world
from explorer_pages.common import sidebar_ui

PAGES = {
    "World": world.page,
    "Decoding": decoding.page,
    "Advantages": advantages.page,
    "Training": training.page,
}


def main() -> None:
    st.set_page_config(page_title="V-STAR explorer", layout="wide")
    page, settings = sidebar_ui(list(PAGES))
    PAGES[page](settings)


if __name__ == "__main__":
    main()
