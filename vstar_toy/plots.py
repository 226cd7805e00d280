"""Matplotlib figures shared by the CLI reports, the explorer and the tutorials.

Every function takes plain data (a world, a tree, a DataFrame), draws on ``ax`` when given (or a
new figure), and returns the figure. No computation of results happens here.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize

from .world import World


def _fig_ax(ax, figsize):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def sid_icicle(world: World, node_values: np.ndarray, ax=None, cmap="viridis", label="", highlight=None,
               max_level: int | None = None):
    """Icicle of the SID trie: one row per level, each prefix a box as wide as its item count,
    coloured by ``node_values`` (one value per trie node). ``highlight``: item ids whose paths get
    a red outline (e.g. the history and the ground truth)."""
    cat = world.catalog
    levels = min(max_level or cat.levels, cat.levels)
    fig, ax = _fig_ax(ax, (11, 1.2 + 0.9 * levels))
    vals = node_values[cat.depth >= 1]
    norm = Normalize(np.nanmin(vals), np.nanmax(vals))
    cm = plt.get_cmap(cmap)
    n = cat.n_items
    for lvl in range(1, levels + 1):
        nodes = cat.nodes_at(lvl)
        lo, hi = cat.lo[nodes], cat.hi[nodes]
        colors = cm(norm(node_values[nodes]))
        ax.barh(np.full(len(nodes), -lvl), (hi - lo) / n, left=lo / n, height=0.9, color=colors,
                edgecolor="white" if lvl == 1 else "none", linewidth=0.6)
    if highlight is not None:
        for item in np.atleast_1d(highlight):
            for lvl in range(1, levels + 1):
                node = cat.node_of(cat.sids[[item], :lvl])[0]
                ax.barh(-lvl, (cat.hi[node] - cat.lo[node]) / n, left=cat.lo[node] / n, height=0.9,
                        fill=False, edgecolor="red", linewidth=1.2)
    ax.set_yticks(-np.arange(1, levels + 1), [f"level {lvl}" for lvl in range(1, levels + 1)])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the catalog (items sorted by SID)")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cm), ax=ax, label=label, pad=0.01)
    return fig


def node_popularity(world: World) -> np.ndarray:
    """log of the summed popularity of the items below each trie node (real data: item count)."""
    cat = world.catalog
    out = np.full(cat.n_nodes, np.nan)
    pop = np.exp(world.log_pop) if world.log_pop is not None else np.ones(cat.n_items)
    csum = np.concatenate([[0.0], np.cumsum(pop[cat.order])])
    out[:] = np.log(np.maximum(csum[cat.hi] - csum[cat.lo], 1e-300))
    return out


def node_mean(world: World, item_values: np.ndarray) -> np.ndarray:
    """Mean of per-item values below each trie node."""
    cat = world.catalog
    csum = np.concatenate([[0.0], np.cumsum(np.asarray(item_values, dtype=float)[cat.order])])
    return (csum[cat.hi] - csum[cat.lo]) / (cat.hi - cat.lo)


def world_tree(world: World, user: int | None = None):
    """The SID tree coloured by popularity, and (given a user) by that user's true reward, with the
    user's history and ground truth outlined."""
    rows = 2 if user is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(11, 2.6 * rows + 0.4), squeeze=False)
    sid_icicle(world, node_popularity(world), ax=axes[0, 0], cmap="magma", label="log popularity")
    axes[0, 0].set_title(f"{world.name}: the SID tree, coloured by popularity (exposure)")
    if user is not None:
        hl = np.concatenate([world.histories[user][world.histories[user] >= 0], [world.targets[user]]])
        sid_icicle(world, node_mean(world, world.affinity([user])[0]), ax=axes[1, 0], cmap="viridis",
                   label="mean true reward a(u, i)", highlight=hl)
        axes[1, 0].set_title(f"user {user}: true reward below each prefix; history and y* outlined in red")
    fig.tight_layout()
    return fig


def mismatch_curve(df: pd.DataFrame, ax=None, value="spearman", title=None):
    """Spearman rho per level against the mismatch knob: ``df`` has columns mismatch, level, spearman
    (and optional low / high for a confidence band)."""
    fig, ax = _fig_ax(ax, (6, 4))
    for lvl, g in df.groupby("level"):
        g = g.sort_values("mismatch")
        ax.plot(g["mismatch"], g[value], marker="o", label=f"level {lvl}")
        if "low" in g and g["low"].notna().any():
            ax.fill_between(g["mismatch"], g["low"], g["high"], alpha=0.2)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("mismatch m")
    ax.set_ylabel("Spearman rho(log P_log(prefix), true reward)")
    ax.set_title(title or "The mismatch knob: likelihood vs reward, per SID level")
    ax.legend()
    fig.tight_layout()
    return fig


def decoding_tree(tree_df: pd.DataFrame, levels: int, ax=None, target_sid: str | None = None, title: str = "",
                  color: str = "value"):
    """One query's decoding tree (a ``PrefixTree.to_frame(query)``): nodes placed by depth and SID
    order, size by pi(prefix), colour by V (or another column), pruned nodes as grey crosses, the
    ground-truth path in red."""
    fig, ax = _fig_ax(ax, (10, 4))
    df = tree_df.copy()
    df = df.sort_values("sid").reset_index(drop=True)
    x = {}
    for d in range(levels + 1):
        sub = df[df["depth"] == d]
        for i, node in enumerate(sub["node"]):
            x[node] = (i + 0.5) / max(len(sub), 1)
    pos = {r.node: (x[r.node], -r.depth) for r in df.itertuples()}
    for r in df.itertuples():
        if r.parent >= 0 and r.parent in pos:
            on_gt = target_sid is not None and target_sid.startswith(r.sid) and r.sid != ""
            ax.plot(*zip(pos[r.parent], pos[r.node]), color="red" if on_gt else "lightgrey",
                    lw=1.6 if on_gt else 0.6, zorder=1)
    kept = df[~df["pruned"]]
    size = 15 + 250 * np.exp(kept["logp"].clip(-30, 0)) ** 0.5
    col = kept[color].fillna(kept[color].min() if kept[color].notna().any() else 0)
    sc = ax.scatter([pos[n][0] for n in kept["node"]], [pos[n][1] for n in kept["node"]], s=size, c=col,
                    cmap="coolwarm", zorder=2, edgecolor="k", linewidth=0.3)
    pr = df[df["pruned"]]
    if len(pr):
        ax.scatter([pos[n][0] for n in pr["node"]], [pos[n][1] for n in pr["node"]], marker="x", s=8,
                   color="grey", alpha=0.5, zorder=1, label="pruned")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(-np.arange(levels + 1), ["root"] + [f"level {d}" for d in range(1, levels + 1)])
    ax.set_xticks([])
    ax.set_title(title)
    if kept[color].notna().any():
        fig.colorbar(sc, ax=ax, label=color, pad=0.01)
    return fig


def bar_table(df: pd.DataFrame, metrics: list[str], by: str, ax=None, title: str = ""):
    """Grouped bars of ``metrics`` for each row label in column ``by``, with CI whiskers when
    ``{metric}_low`` / ``{metric}_high`` columns exist."""
    fig, ax = _fig_ax(ax, (1.5 + 1.6 * len(metrics), 3.6))
    width = 0.8 / len(df)
    for i, (_, row) in enumerate(df.iterrows()):
        xs = np.arange(len(metrics)) + i * width
        ys = [row[m] for m in metrics]
        err = None
        if all(f"{m}_low" in row for m in metrics):
            err = np.array([[row[m] - row[f"{m}_low"], row[f"{m}_high"] - row[m]] for m in metrics]).T
            err = np.nan_to_num(err)
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=str(row[by]))
    ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, metrics)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def save(fig, path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
