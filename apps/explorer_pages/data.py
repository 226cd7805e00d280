"""What every page shares: the preset's config, its world and its models, cached.

Each page's own cached library calls live beside it (``world_data.py``, ``decoding_data.py``,
``advantages_data.py``, ``training_data.py``); every number a page shows comes from one of them.
Two kinds of cache (Streamlit's):

- ``st.cache_resource`` for objects shared by all sessions and never copied: the world, the SFT
  policy and the value head (``vstar_toy.pipeline`` also caches the trained models on disk, so only
  the very first run of a preset trains them). Sessions decode with them at the same time: the
  encoded prompts travel with each decode's states, never on the policy.
- ``st.cache_data`` for results (DataFrames, dicts of numbers), keyed by the widgets' values.

Training runs are cached on disk instead (``training_data.py``). No algorithm lives here: each
function calls the library and arranges its output for display.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from vstar_toy.config import Config, preset
from vstar_toy.pipeline import build_world, sft_policy, value_model
from vstar_toy.world import World

# ----------------------------------------------------------------------------------------------
# the world and the models


def config(preset_name: str) -> Config:
    return preset(preset_name)


@st.cache_resource(show_spinner="Building the synthetic world...")
def load_world(preset_name: str) -> World:
    """The preset's world (docs/design.md, section 3)."""
    return build_world(config(preset_name).world)


@st.cache_resource(show_spinner="Setting the mismatch knob...")
def world_at(preset_name: str, mismatch: float) -> World:
    """The preset's world with the logs' mismatch knob set to ``mismatch`` (``World.with_mismatch``)."""
    return load_world(preset_name).with_mismatch(mismatch)


@dataclass
class Models:
    world: World
    policy: object
    head: object
    notes: list[str]


@st.cache_resource(show_spinner="Loading the SFT policy and the value head. On a preset's first run they are trained "
                                "(about 2 minutes on 2 CPU cores; `make demo` trains the high_mismatch ones), then "
                                "read from the disk cache...")
def load_models(preset_name: str) -> Models:
    """The preset's SFT policy and value head V_phi, from vstar_toy.pipeline's disk cache (or trained)."""
    cfg = config(preset_name)
    world = load_world(preset_name)
    notes: list[str] = []
    policy = sft_policy(world, cfg, progress=False, say=notes.append)
    head = value_model(world, policy, cfg, progress=False, say=notes.append)
    return Models(world, policy, head.eval(), notes)


@st.cache_data(show_spinner="Building the synthetic world...")
def test_users(preset_name: str) -> list[int]:
    """Ids of the test split's users (the explorer only shows users SFT never trained on)."""
    return load_world(preset_name).queries("test").users.tolist()
