"""What every page shares: the sidebar (page, preset, user, "show the source"), figures, source listings."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import matplotlib.pyplot as plt
import streamlit as st

from . import data

# Presets the explorer offers: small enough to decode one user in about a second on a laptop CPU. The
# first is `make demo`'s, so the explorer finds the models the demo trained in the disk cache.
PRESETS = ("high_mismatch", "cpu_demo", "no_mismatch", "tiny")


def default_preset() -> str:
    """``$VSTAR_TOY_APP_PRESET`` when it names one of PRESETS (the tests use tiny), else the demo's."""
    name = os.environ.get("VSTAR_TOY_APP_PRESET", PRESETS[0])
    return name if name in PRESETS else PRESETS[0]


@dataclass(frozen=True)
class Settings:
    """The sidebar's choices, passed to every page."""

    preset: str
    """Name of a vstar_toy.config preset."""
    user: int
    """Id of a test-split user: the query x every page looks at."""
    show_source: bool
    """Show the library functions the page calls."""


def sidebar_ui(pages: list[str]) -> tuple[str, Settings]:
    """The sidebar; returns the chosen page and the settings. ``?page=decoding`` opens a page by URL."""
    st.sidebar.title("V-STAR explorer")
    slugs = [p.lower() for p in pages]
    wanted = st.query_params.get("page", slugs[0])
    page = st.sidebar.radio("Page", pages, index=slugs.index(wanted) if wanted in slugs else 0)
    st.query_params["page"] = page.lower()
    preset = st.sidebar.selectbox("Preset", PRESETS, index=PRESETS.index(default_preset()),
                                  help="vstar_toy.config presets: 2,000 items with 16 codes per level at mismatch "
                                       "0.9 (`make demo`'s), 0.5 and 0; tiny is 200 items with 8 (for tests). "
                                       "Decoding uses the preset's SFT policy and value head, trained on the first "
                                       "run (a minute or two) and cached on disk.")
    users = data.test_users(preset)
    user = st.sidebar.selectbox("Test user", users, format_func=lambda u: f"user {u}",
                                help="a user from the test split: SFT never saw their logged items")
    show_source = st.sidebar.toggle("Show the source", help="list the library functions this page calls")
    st.sidebar.caption(f"world: {data.load_world(preset).name}; {len(users)} test users")
    return page, Settings(preset=preset, user=int(user), show_source=show_source)


def what_to_look_at(text: str) -> None:
    """The short text at the top of every page."""
    st.info("**What to look at.** " + text)


def show(fig) -> None:
    """Draw a matplotlib figure and free it."""
    st.pyplot(fig, clear_figure=True)
    plt.close(fig)


def show_source(settings: Settings, functions: list) -> None:
    """In "show the source" mode, the source of each function the page called."""
    if not settings.show_source:
        return
    st.divider()
    st.subheader("The source")
    st.caption("The library functions this page calls; the page itself only arranges their output.")
    for fn in functions:
        name = f"{fn.__module__}.{fn.__qualname__}"
        with st.expander(name):
            st.code(inspect.getsource(fn), language="python")
