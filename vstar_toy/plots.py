"""Matplotlib figures shared by the CLI reports, the explorer and the tutorials.

Every function takes plain data (a world, a tree, a DataFrame), draws on ``ax`` when given (or a
new figure), and returns the figure. No computation of results happens here.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle

from .rl import columns
from .world import World, sid_str


def _fig_ax(ax, figsize):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def path_nodes(world: World, items, levels: int | None = None) -> np.ndarray:
    """Trie nodes on the paths of ``items`` (one id or many) at depths 1 .. ``levels``, without repeats."""
    cat = world.catalog
    levels = min(levels or cat.levels, cat.levels)
    items = np.atleast_1d(np.asarray(items, dtype=np.int64))
    items = items[items >= 0]
    nodes = [cat.node_of(cat.sids[items, :lvl]) for lvl in range(1, levels + 1)]
    return np.unique(np.concatenate(nodes)) if nodes else np.zeros(0, dtype=np.int64)


def sid_icicle(world: World, node_values: np.ndarray, ax=None, cmap="viridis", label="", highlight=None,
               max_level: int | None = None, target: int | None = None):
    """Icicle of the SID trie: one row per level, each prefix a box as wide as its item count,
    coloured by ``node_values`` (one value per trie node). ``highlight``: item ids whose paths get
    a red outline (e.g. the history); ``target``: one item id whose path gets a thick black outline
    (e.g. the ground truth y*)."""
    cat = world.catalog
    levels = min(max_level or cat.levels, cat.levels)
    fig, ax = _fig_ax(ax, (11, 1.2 + 0.9 * levels))
    vals = node_values[cat.depth >= 1]
    norm = Normalize(np.nanmin(vals), np.nanmax(vals))
    cm = plt.get_cmap(cmap)
    n = cat.n_items
    for lvl in range(1, levels + 1):  # one mesh of boxes per level (a bar per node is slow: ~4,600 patches)
        nodes = cat.nodes_at(lvl)
        nodes = nodes[np.argsort(cat.lo[nodes])]  # side by side, in SID order: they tile [0, n)
        edges = np.append(cat.lo[nodes], cat.hi[nodes[-1]]) / n
        ax.pcolormesh(edges, [-lvl - 0.45, -lvl + 0.45], node_values[nodes][None, :], cmap=cm, norm=norm,
                      edgecolors="white" if lvl == 1 else "none", linewidth=0.6 if lvl == 1 else 0)
    for items, color, lw in ((highlight, "red", 1.2), (target, "black", 2.4)):
        if items is None:
            continue
        for node in path_nodes(world, items, levels):
            ax.barh(-cat.depth[node], (cat.hi[node] - cat.lo[node]) / n, left=cat.lo[node] / n, height=0.9,
                    fill=False, edgecolor=color, linewidth=lw)
    ax.set_yticks(-np.arange(1, levels + 1), [f"level {lvl}" for lvl in range(1, levels + 1)])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the catalog (items sorted by SID)")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cm), ax=ax, label=label, pad=0.01)
    return fig


def node_popularity(world: World) -> np.ndarray:
    """log of the summed popularity of the items below each trie node (real data: log of the item count)."""
    log_pop = world.log_pop if world.log_pop is not None else np.zeros(world.catalog.n_items)
    return world.catalog.node_logsumexp(log_pop)


def world_tree(world: World, user: int | None = None):
    """The SID tree coloured by popularity, and (given a user) by that user's true reward, with the
    user's history and ground truth outlined."""
    rows = 2 if user is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(11, 2.6 * rows + 0.4), squeeze=False)
    sid_icicle(world, node_popularity(world), ax=axes[0, 0], cmap="magma", label="log popularity")
    axes[0, 0].set_title(f"{world.name}: the SID tree, coloured by popularity (exposure)")
    if user is not None:
        history = world.histories[user][world.histories[user] >= 0]
        sid_icicle(world, world.catalog.node_mean(world.affinity([user])[0]), ax=axes[1, 0], cmap="viridis",
                   label="mean true reward a(u, i)", highlight=history, target=int(world.targets[user]))
        axes[1, 0].set_title(f"user {user}: true reward below each prefix; the history outlined in red, the ground "
                             "truth y* in thick black")
    fig.tight_layout()
    return fig


def mismatch_curve(df: pd.DataFrame, ax=None, value="spearman", title=None, mark: float | None = None):
    """Spearman rho per level against the mismatch knob: ``df`` has columns mismatch, level, spearman
    (and optional low / high for a confidence band). ``mark``: a mismatch to show as a dashed line."""
    fig, ax = _fig_ax(ax, (6, 4))
    for lvl, g in df.groupby("level"):
        g = g.sort_values("mismatch")
        ax.plot(g["mismatch"], g[value], marker="o", label=f"level {lvl}")
        if "low" in g and g["low"].notna().any():
            ax.fill_between(g["mismatch"], g["low"], g["high"], alpha=0.2)
    ax.axhline(0, color="grey", lw=0.8)
    if mark is not None:
        ax.axvline(mark, color="black", ls="--", lw=1, label=f"m = {mark:g}")
    ax.set_xlabel("mismatch m")
    ax.set_ylabel("Spearman rho(log P_log(prefix), true reward)")
    ax.set_title(title or "The mismatch knob: likelihood vs reward, per SID level")
    ax.legend()
    fig.tight_layout()
    return fig


def decoding_tree(tree_df: pd.DataFrame, levels: int, ax=None, target_sid: str | None = None, title: str = "",
                  color: str = "value"):
    """One query's decoding tree (a ``PrefixTree.to_frame(query)``): leaves (kept or pruned) side by
    side in SID order, each inner node above the middle of its children; size by pi(prefix), colour
    by V (or another column; hollow where it has no value), pruned nodes as grey crosses, the
    ground-truth path in red."""
    fig, ax = _fig_ax(ax, (10, 4))
    df = tree_df.reset_index(drop=True)
    code = {r.node: tuple(int(t) for t in r.sid.split("-")) if r.sid else () for r in df.itertuples()}
    children: dict[int, list[int]] = {n: [] for n in df["node"]}
    for node, parent in zip(df["node"], df["parent"]):
        if parent in children:
            children[parent].append(node)
    leaves = sorted((n for n, ch in children.items() if not ch), key=code.get)
    x = {n: (i + 0.5) / len(leaves) for i, n in enumerate(leaves)}
    for n in sorted(children, key=lambda n: -len(code[n])):  # deepest first: children are placed before parents
        if children[n]:
            x[n] = float(np.mean([x[c] for c in children[n]]))
    pos = {r.node: (x[r.node], -r.depth) for r in df.itertuples()}
    # a node is on the ground-truth path when its SID is a whole-token prefix of y*'s ("1" of "1-2-3", not of "12-3")
    gt_prefixes = set()
    if target_sid:
        toks = target_sid.split("-")
        gt_prefixes = {"-".join(toks[:d]) for d in range(1, len(toks) + 1)}
    for r in df.itertuples():
        if r.parent >= 0 and r.parent in pos:
            on_gt = r.sid in gt_prefixes
            ax.plot(*zip(pos[r.parent], pos[r.node]), color="red" if on_gt else "lightgrey",
                    lw=1.6 if on_gt else 0.6, zorder=1)
    kept = df[~df["pruned"]]
    size = 15 + 250 * np.exp(kept["logp"].clip(-30, 0)) ** 0.5
    has = kept[color].notna().to_numpy()
    xy = np.array([pos[n] for n in kept["node"]]).reshape(-1, 2)
    sc = ax.scatter(xy[has, 0], xy[has, 1], s=size[has], c=kept[color][has], cmap="coolwarm", zorder=2,
                    edgecolor="k", linewidth=0.3)
    if (~has).any():  # nodes without a value in this column (e.g. V of a beam node that was never scored)
        ax.scatter(xy[~has, 0], xy[~has, 1], s=size[~has], facecolor="white", edgecolor="grey", linewidth=0.6,
                   zorder=2, label=f"no {color}")
    pr = df[df["pruned"]]
    if len(pr):
        ax.scatter([pos[n][0] for n in pr["node"]], [pos[n][1] for n in pr["node"]], marker="x", s=8,
                   color="grey", alpha=0.5, zorder=1, label="pruned")
    if len(pr) or (~has).any():
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


# ----------------------------------------------------------------------------------------------
# more views of the SID trie (the explorer's World page offers icicle, sunburst and treemap)


def _trie_norm(world: World, node_values: np.ndarray, levels: int):
    vals = node_values[(world.catalog.depth >= 1) & (world.catalog.depth <= levels)]
    return Normalize(np.nanmin(vals), np.nanmax(vals))


def sid_sunburst(world: World, node_values: np.ndarray, ax=None, cmap="viridis", label="", highlight=None,
                 max_level: int | None = None, target: int | None = None):
    """Sunburst of the SID trie: level l is the l-th ring, each prefix an arc as wide as its item count,
    coloured by ``node_values`` (one per trie node). ``highlight`` (red) and ``target`` (black) as in
    :func:`sid_icicle`. ``ax``, if given, must be a polar axes."""
    cat = world.catalog
    levels = min(max_level or cat.levels, cat.levels)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 6), subplot_kw={"projection": "polar"})
    fig = ax.figure
    norm, cm, n = _trie_norm(world, node_values, levels), plt.get_cmap(cmap), cat.n_items
    nodes = np.flatnonzero((cat.depth >= 1) & (cat.depth <= levels))
    theta0, width = 2 * np.pi * cat.lo[nodes] / n, 2 * np.pi * (cat.hi[nodes] - cat.lo[nodes]) / n
    ax.bar(theta0, 0.95, width=width, bottom=cat.depth[nodes] - 0.5, align="edge",
           color=cm(norm(node_values[nodes])), edgecolor=np.where(cat.depth[nodes] == 1, "white", "none"),
           linewidth=0.6)
    for items, color, lw in ((highlight, "red", 1.0), (target, "black", 2.0)):
        if items is None:
            continue
        hl = path_nodes(world, items, levels)
        ax.bar(2 * np.pi * cat.lo[hl] / n, 0.95, width=2 * np.pi * (cat.hi[hl] - cat.lo[hl]) / n,
               bottom=cat.depth[hl] - 0.5, align="edge", fill=False, edgecolor=color, linewidth=lw)
    ax.set_ylim(0, levels + 0.5)
    ax.set_yticks(np.arange(1, levels + 1), [f"l={lvl}" for lvl in range(1, levels + 1)], fontsize=7)
    ax.set_xticks([])
    ax.spines["polar"].set_visible(False)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cm), ax=ax, label=label, pad=0.08, shrink=0.7)
    return fig


def treemap_rects(world: World, levels: int | None = None) -> np.ndarray:
    """(M, 4) rectangles (x0, y0, x1, y1) of every trie node in a slice-and-dice treemap of the unit
    square: level 1 splits along x by item count, level 2 splits each level-1 box along y, and so on."""
    cat = world.catalog
    levels = min(levels or cat.levels, cat.levels)
    rect = np.zeros((cat.n_nodes, 4))
    rect[0] = (0.0, 0.0, 1.0, 1.0)
    for lvl in range(1, levels + 1):
        nodes = cat.nodes_at(lvl)
        par = cat.parent[nodes]
        span = (cat.hi[par] - cat.lo[par]).astype(float)
        f0, f1 = (cat.lo[nodes] - cat.lo[par]) / span, (cat.hi[nodes] - cat.lo[par]) / span
        r = rect[par].copy()
        axis = (lvl - 1) % 2  # 0: split along x, 1: along y
        lo, hi = r[:, axis], r[:, axis + 2]
        r[:, axis], r[:, axis + 2] = lo + f0 * (hi - lo), lo + f1 * (hi - lo)
        rect[nodes] = r
    return rect


def sid_treemap(world: World, node_values: np.ndarray, ax=None, cmap="viridis", label="", highlight=None,
                max_level: int | None = None, target: int | None = None):
    """Treemap of the SID trie: the boxes of depth ``max_level`` (default L) coloured by ``node_values``,
    nested inside white borders of the shallower levels (thicker = shallower). Area = item count.
    ``highlight`` (red) and ``target`` (black) outline the deepest box of each item's path."""
    cat = world.catalog
    levels = min(max_level or cat.levels, cat.levels)
    fig, ax = _fig_ax(ax, (8, 6))
    rect = treemap_rects(world, levels)
    norm, cm = _trie_norm(world, node_values, levels), plt.get_cmap(cmap)

    def boxes(nodes, **kw):
        r = rect[nodes]
        return PatchCollection([Rectangle((a, b), c - a, d - b) for a, b, c, d in r], **kw)

    deep = cat.nodes_at(levels)
    ax.add_collection(boxes(deep, facecolors=cm(norm(node_values[deep])), edgecolors="none"))
    for lvl in range(levels - 1, 0, -1):
        ax.add_collection(boxes(cat.nodes_at(lvl), facecolors="none", edgecolors="white",
                                linewidths=0.4 + 1.2 * (levels - lvl)))
    for items, color, lw in ((highlight, "red", 1.2), (target, "black", 2.4)):
        if items is None:
            continue
        hl = path_nodes(world, items, levels)
        ax.add_collection(boxes(hl[cat.depth[hl] == levels], facecolors="none", edgecolors=color, linewidths=lw))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cm), ax=ax, label=label, pad=0.01)
    return fig


# ----------------------------------------------------------------------------------------------
# candidate sets, advantages and budgets


def candidate_tree(sids, node_values, ax=None, title: str = "", label: str = "", cmap: str = "coolwarm",
                   leaf_text=None, annotate: bool | None = None, vmax: float | None = None):
    """The prefix tree of one candidate set, each node coloured by a per-node value.

    Args:
        sids: (C, L) int SIDs of the candidates.
        node_values: (C, L) float; entry [i, l] is the value of the depth-(l + 1) node candidate i
            passes through (the layout of ``sibling_node_advantages``). NaN: no value (hollow node).
        leaf_text: optional (C,) strings written under the leaves (e.g. the rewards).
        annotate: write each node's value beside it (default: when there are at most 40 nodes).
        vmax: colour range [-vmax, vmax] (default: the largest |value|), so 0 is the middle colour.

    Leaves sit in SID order; an inner node sits above the middle of its leaves; the root is on top.
    """
    s = np.asarray(sids, dtype=np.int64).reshape(len(node_values), -1)
    vals = np.asarray(node_values, dtype=float).reshape(s.shape)
    c, L = s.shape
    fig, ax = _fig_ax(ax, (max(5.0, 0.55 * c + 2), 1.2 + 1.0 * L))
    # nodes: distinct prefixes per depth, keyed by the tuple of their tokens
    leaf_keys = sorted({tuple(r) for r in s.tolist()})
    x = {k: float(i) for i, k in enumerate(leaf_keys)}
    for d in range(L - 1, -1, -1):
        for k in {k[:d] for k in leaf_keys}:
            x[k] = float(np.mean([x[leaf] for leaf in leaf_keys if leaf[:d] == k]))
    node_val = {}
    for i in range(c):
        for d in range(1, L + 1):
            k = tuple(s[i, :d].tolist())
            if np.isfinite(vals[i, d - 1]) and k not in node_val:
                node_val[k] = vals[i, d - 1]
    for k in x:
        if len(k):
            ax.plot([x[k[:-1]], x[k]], [-(len(k) - 1), -len(k)], color="lightgrey", lw=0.8, zorder=1)
    keys = [k for k in x if len(k)]
    finite = [node_val[k] for k in keys if k in node_val]
    vmax = vmax or (max(abs(v) for v in finite) if finite else 1.0) or 1.0
    norm, cm = Normalize(-vmax, vmax), plt.get_cmap(cmap)
    ax.scatter([x[()]], [0], s=60, color="black", zorder=2)
    for k in keys:
        v = node_val.get(k, np.nan)
        face = cm(norm(v)) if np.isfinite(v) else "white"
        ax.scatter([x[k]], [-len(k)], s=140, color=face, edgecolor="k" if np.isfinite(v) else "grey",
                   linewidth=0.5, zorder=2)
    if annotate or (annotate is None and len(keys) <= 40):
        for k in keys:
            if k in node_val:
                ax.annotate(f"{node_val[k]:+.2f}", (x[k], -len(k)), xytext=(7, 4), textcoords="offset points",
                            fontsize=7)
    if leaf_text is not None:
        for i in range(c):
            k = tuple(s[i].tolist())
            ax.annotate(str(leaf_text[i]), (x[k], -L), xytext=(0, -16), textcoords="offset points", fontsize=7,
                        ha="center", rotation=90 if c > 12 else 0, va="top")
    ax.set_xticks([x[k] for k in leaf_keys], [sid_str(k) for k in leaf_keys], rotation=90, fontsize=7)
    ax.set_yticks(-np.arange(L + 1), ["root"] + [f"depth {d}" for d in range(1, L + 1)])
    ax.set_xlim(-0.6, len(leaf_keys) - 0.2)
    ax.set_ylim(-L - (1.2 if leaf_text is not None else 0.4), 0.4)
    ax.set_title(title)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cm), ax=ax, label=label, pad=0.01)
    return fig


def advantage_bounds_bars(bounds: dict, ax=None, title: str = ""):
    """The realised spread of group advantages against their bounds, on a log scale.

    ``bounds`` maps names to numbers, e.g. the (B,) entries of one query from
    ``rl.advantages.advantage_bounds``: max_abs_A, sigma_A, samuelson, eq4_tight, eq4_loose."""
    fig, ax = _fig_ax(ax, (6.5, 3.4))
    order = [k for k in ("max_abs_A", "sigma_A", "samuelson", "eq4_tight", "eq4_loose") if k in bounds]
    order += [k for k in bounds if k not in order]
    names = {"max_abs_A": "realised max|A|", "sigma_A": "realised sigma_A", "samuelson": "Samuelson sqrt(n-1)",
             "eq4_tight": "Eq. 4 Delta/(sigma+eps)", "eq4_loose": "Eq. 4 Delta/eps"}
    vals = np.array([float(bounds[k]) for k in order])
    colors = ["tab:blue" if k in ("max_abs_A", "sigma_A") else "tab:orange" for k in order]
    shown = np.where(np.isfinite(vals) & (vals > 0), vals, np.nan)
    ax.barh(np.arange(len(order)), shown, color=colors)
    for i, v in enumerate(vals):
        ax.annotate(f"{v:.3g}", (shown[i] if np.isfinite(shown[i]) else 1e-3, i), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_yticks(np.arange(len(order)), [names.get(k, k) for k in order])
    ax.invert_yaxis()
    ax.set_xlabel("value (log scale); blue: realised, orange: bounds")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def budget_split(df: pd.DataFrame, ax=None, title: str = "Forward tokens per query"):
    """Stacked bars of how each decoder spent its budget: ``df`` has columns decoder, warmup_tokens,
    expansion_tokens and budget_tokens (one row per decoder); the budget is a black tick."""
    fig, ax = _fig_ax(ax, (6.5, 1.6 + 0.5 * len(df)))
    y = np.arange(len(df))
    warm, exp_ = df["warmup_tokens"].to_numpy(float), df["expansion_tokens"].to_numpy(float)
    ax.barh(y, warm, color="tab:blue", label="warm start (likelihood beam)")
    ax.barh(y, exp_, left=warm, color="tab:green", label="value-guided expansion")
    ax.scatter(df["budget_tokens"], y, marker="|", s=400, color="black", zorder=3, label="budget B")
    ax.set_yticks(y, df["decoder"])
    ax.invert_yaxis()
    ax.set_xlabel("backbone forward tokens (Cost, Sec. 4.2)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


def save(fig, path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# training curves (the explorer's Training page, notebook 05)

# The panels of ``training_curves``: title -> [(column of rl.train's log (rl/columns.py), label of its line
# style)]. ``{l}`` in a column stands for each SID level 1 .. L.
TRAINING_PANELS: dict[str, list[tuple[str, str]]] = {
    "reward R the learner sees": [(columns.REWARD, "mean over C"), (columns.REWARD_STD, "std within a group")],
    "true reward a(u, y) (oracle, mean over C)": [(columns.TRUE_REWARD, "")],
    "validation, beam search": [(columns.VALID_NDCG10, "NDCG@10"), (columns.VALID_HR10, "HR@10")],
    "validation mean true reward": [(columns.VALID_MEAN_REWARD, "beam search"), (columns.VALID_VED_MEAN_REWARD, "VED")],
    "transfer: VED's lead carried into the policy": [(columns.TRANSFER, "")],
    "groups with a learning signal": [(columns.ZERO_VAR_SHARE, "GRPO groups with no reward variance"),
                                      (columns.SIBLING_SIGNAL_SHARE, "sibling groups with a contrast")],
    "contrast among siblings": [(columns.ADV_SPREAD_GLOBAL, "GRPO's scale (global)"),
                                (columns.ADV_SPREAD_SIBLING, "Sibling-GRPO (Eq. 18)")],
    "KL to the SFT reference (k3)": [(columns.LOSS_KL, "")],
    "gradient norm before clipping": [(columns.GRAD_NORM, "")],
    "entropy H at the decoded prefixes (Eq. 12)": [(columns.entropy("{l}"), "level {l}")],
    "Spearman rho(V, prefix reward)": [(columns.rho("value", "{l}"), "level {l}")],
    "Spearman rho(log pi, prefix reward)": [(columns.rho("logp", "{l}"), "level {l}")],
    "value TD loss (Eq. 9)": [(columns.VALUE_LOSS, "")],
}
SQUEEZING_PANELS = {  # what the update does to level-1 mass (issue 20; rl/diagnostics.py: mass_shift)
    "level-1 mass on the SFT policy's top code": [(columns.mass(columns.SFT_TOP), "")],
    "level-1 mass on the user's best code": [(columns.mass(columns.ORACLE_BEST), "")],
    "advantage mass on that branch (per |C|)": [(columns.pushed(columns.SFT_TOP), "SFT top code"),
                                                (columns.pushed(columns.ORACLE_BEST), "user's best code")],
    "policy's own beam set inside the group": [(columns.BEAM_OVERLAP, "")],
    "pi(y*_l | y*_<l) along the best item's path": [(columns.mass(columns.ORACLE_BEST, lv), f"level {lv}")
                                                   for lv in (1, 2, 3)],
}
TRAINING_PANELS |= SQUEEZING_PANELS


def training_curves(logs: dict[str, pd.DataFrame], panels: dict[str, list[tuple[str, str]]] | None = None,
                    ncols: int = 4, title: str = ""):
    """Curves of one or more training runs, one panel per quantity, one colour per run.

    ``logs`` maps a run's name to its log (``TrainResult.log`` or a run directory's metrics.csv: one
    row per step, column ``step``); ``panels`` defaults to ``TRAINING_PANELS``. Within a panel, line
    styles tell its series apart (solid, dashed, dotted; a grey key). Evaluation columns are filled
    only every ``eval_every`` steps: they are drawn through their filled rows, with markers. Columns a
    log lacks or leaves empty (V's Spearman without a value head) are skipped; an empty panel says so."""
    panels = TRAINING_PANELS if panels is None else panels
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.6 * nrows + (0.6 if title else 0.4)),
                             squeeze=False, layout="constrained")
    styles = ["-", "--", ":", "-."]
    for ax, (name, series) in zip(axes.flat, panels.items()):
        keys: dict[str, str] = {}  # label -> line style, for the panel's grey key
        for i, log in enumerate(logs.values()):
            cols = []
            for col, label in series:  # "{l}" stands for every level the log has
                if "{l}" in col:
                    lvl = 1
                    while col.format(l=lvl) in log:
                        cols.append((col.format(l=lvl), label.format(l=lvl)))
                        lvl += 1
                else:
                    cols.append((col, label))
            for j, (col, label) in enumerate(cols):
                if col not in log or log[col].isna().all():
                    continue
                d = log[[columns.STEP, col]].dropna()
                sparse = len(d) < len(log) or len(d) <= 12  # evaluation rows, or a very short run
                ax.plot(d[columns.STEP], d[col], color=f"C{i}", ls=styles[j % len(styles)],
                        marker="o" if sparse else None, ms=3, lw=1.3)
                if label:
                    keys[label] = styles[j % len(styles)]
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", color="grey", transform=ax.transAxes)
        elif any(col == columns.ADV_SPREAD_SIBLING for col, _ in series):
            ax.axhline(1.0, color="grey", lw=0.6)  # Sibling-GRPO's contrast sigma_h / (sigma_h + eps) is about 1
        if keys:
            ax.legend([plt.Line2D([], [], color="grey", ls=ls) for ls in keys.values()], list(keys), fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    # one key of the runs' colours above the panels, under the title
    fig.legend([plt.Line2D([], [], color=f"C{i}", lw=2) for i in range(len(logs))], list(logs),
               loc="outside upper center", ncol=min(len(logs), 4), fontsize=9, frameon=False,
               title=title or None, title_fontsize=11)
    return fig


# ----------------------------------------------------------------------------------------------
# the reproduction report's figures (experiments/report.py): each reads a claim's table (one row per arm and
# metric: mean, ci_low, ci_high, and the arm's factors as columns) or curves the report has gathered


def _ci_err(df: pd.DataFrame) -> np.ndarray:
    lo = (df["mean"] - df.ci_low).fillna(0).to_numpy()
    hi = (df.ci_high - df["mean"]).fillna(0).to_numpy()
    return np.vstack([lo, hi])


def claim_spearman(df: pd.DataFrame):
    """Fig. 3 in the toy (claim 6): per level, the Spearman rho with the prefix reward of log pi under each
    policy, of V, of the cosine and of the oracle, with 95% intervals over seeds."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    series = [("SFT", "logp", "P (SFT)"), ("beam+GRPO", "logp", "P (beam+GRPO)"), ("V-STAR", "logp", "P (V-STAR)"),
              ("V-STAR", "value", "V (V-STAR)"), ("V-STAR", "cosine", "cosine (no learning)"),
              ("V-STAR", "oracle", "oracle (the truth)")]
    levels = [lv for lv in range(1, 17) if f"logp_l{lv}" in set(df.metric)]
    width = 0.8 / len(series)
    for i, (arm, kind, label) in enumerate(series):
        sub = df[(df.arm == arm) & df.metric.isin([f"{kind}_l{lv}" for lv in levels])]
        if sub.empty:
            continue
        ax.bar(np.arange(len(sub)) + (i - (len(series) - 1) / 2) * width, sub["mean"], width, yerr=_ci_err(sub),
               label=label, capsize=2)
    ax.set_xticks(range(len(levels)), [f"level {lv}" for lv in levels])
    ax.set_ylabel("Spearman rho with prefix reward")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7)
    ax.set_title("Fig. 3 in the toy: probability (P) and value (V) vs true reward", fontsize=9)
    return fig


def claim_budget(df: pd.DataFrame):
    """Fig. 4 in the toy (claim 7): test NDCG@10 against the training-time budget, one line per decoder the
    policy was trained with (the ``trained_with`` and ``budget_x`` columns)."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for dec, g in df[df.metric == "ndcg@10"].groupby("trained_with"):
        g = g.sort_values("budget_x")
        ax.errorbar(g.budget_x, g["mean"], yerr=_ci_err(g), marker="o", capsize=3, label=f"train with {dec}")
    ax.set_xlabel("training-time decoding budget (x of 1 + 2|C| tokens)")
    ax.set_ylabel("test NDCG@10")
    ax.legend(fontsize=8)
    ax.set_title("Fig. 4 in the toy: budget scaling", fontsize=9)
    return fig


def claim_mismatch(df: pd.DataFrame):
    """Claim 8: VED minus beam search as the mismatch knob turns (the ``mismatch`` column), learned value
    solid, oracle value dashed."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for metric in ("max_reward", "ndcg@10", "reachability", "oracle max_reward"):
        g = df[df.metric == metric].sort_values("mismatch")
        if g.empty:
            continue
        oracle = metric.startswith("oracle ")
        ax.errorbar(g.mismatch, g["mean"], yerr=_ci_err(g), marker="o", capsize=3, ls="--" if oracle else "-",
                    label=metric.removeprefix("oracle ") + (" (VED with the oracle value)" if oracle else ""))
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("mismatch m")
    ax.set_ylabel("VED minus beam search")
    ax.legend(fontsize=8)
    ax.set_title("The VED gain as the mismatch knob turns", fontsize=9)
    return fig


def _bands(ax, table: pd.DataFrame, label: str, ms: int, alpha: float) -> None:
    """One curve per arm: the mean over seeds (the columns of ``table``, indexed by step) and the band from the
    lowest seed to the highest."""
    ax.plot(table.index, table.mean(axis=1), marker="o", ms=ms, label=label)
    ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), alpha=alpha)


def seed_curves(curves: dict[str, dict[str, pd.DataFrame]], ylabels: dict[str, str], title: str):
    """The report's learning curves: one panel per log column of ``curves`` ({column: {arm: (step x seed)
    table}}), each arm's mean over seeds and its min-max band."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, (col, arms) in zip(axes[0], curves.items()):
        for arm, table in arms.items():
            _bands(ax, table, arm, 3, 0.2)
        ax.set_xlabel("RL step")
        ax.set_ylabel(f"validation {ylabels[col]}")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def horizon_curves(curves: dict[float, dict[str, dict[int, pd.DataFrame]]]):
    """Claim 10's learning curves: per mismatch (columns), the validation mean true reward by beam search
    (top) and the same users decoded by VED (bottom) at every evaluation of each arm's runs ({m: {arm: {seed:
    log}}}), the mean over the seeds and the band from the lowest to the highest; a run that stopped (its
    curve was flat) counts with its last value from then on (the policy it ended with), so a mean never shows
    only the survivors."""
    fig, axes = plt.subplots(2, len(curves), figsize=(5 * len(curves), 6.4), squeeze=False, sharex="col")
    for j, (m, arms) in enumerate(curves.items()):
        for i, (col, label) in enumerate(((columns.VALID_MEAN_REWARD, "beam search"),
                                          (columns.VALID_VED_MEAN_REWARD, "VED"))):
            ax = axes[i, j]
            for name, per_seed in arms.items():
                series = {s: log.set_index(columns.STEP)[col].dropna() for s, log in per_seed.items() if col in log}
                if not series or all(v.empty for v in series.values()):
                    continue
                _bands(ax, pd.concat(series, axis=1).ffill(), name, 2, 0.15)  # a stopped run keeps its policy
            ax.set_title(f"m = {m:g}: validation, decoded by {label}", fontsize=9)
            ax.set_ylabel("mean true reward")
            if i == 1:
                ax.set_xlabel("RL step")
            ax.legend(fontsize=6)
    n = max(len(per_seed) for arms in curves.values() for per_seed in arms.values())
    fig.suptitle(f"Claim 10: training to the horizon ({n} seeds: mean and min-max band)", fontsize=10)
    return fig


def advantage_spread(spreads: dict[str, tuple[np.ndarray, np.ndarray]]):
    """Histograms, per decoder, of the per-query within-parent spread of node advantages under GRPO's global
    normalisation and under Sibling-GRPO's (``spreads``: {decoder: (global, sibling)}, NaN where undefined)."""
    fig, axes = plt.subplots(1, len(spreads), figsize=(4 * len(spreads), 3.2), sharey=True, squeeze=False)
    bins = np.linspace(0, 1.1, 23)
    for ax, (dec, (g, sib)) in zip(axes[0], spreads.items()):
        ax.hist(g[~np.isnan(g)], bins=bins, alpha=0.7, label="GRPO (global sigma)")
        ax.hist(sib[~np.isnan(sib)], bins=bins, alpha=0.7, label="Sibling-GRPO")
        ax.set_title(f"{dec} candidates", fontsize=9)
        ax.set_xlabel("within-parent spread of node advantages")
    axes[0, 0].set_ylabel("queries")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Advantage compression: what shrinks under global normalisation", fontsize=9)
    return fig
