"""Before/after drawing of an HGS graph (matplotlib; layered layout, no graph library needed)."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple


def _layers(names: List[str], edges: List[Tuple[str, str]], sources: List[str]) -> Dict[str, Tuple[float, float]]:
    """Nodes placed by their longest-path depth from the inputs (self loops ignored)."""
    depth = {n: 0 for n in names}
    for _ in range(len(names)):
        changed = False
        for u, v in edges:
            if u != v and u in depth and v in depth and depth[v] < depth[u] + 1 and depth[u] + 1 < len(names):
                depth[v] = depth[u] + 1
                changed = True
        if not changed:
            break
    for s in sources:
        depth[s] = 0
    cols: Dict[int, List[str]] = {}
    for n in names:
        cols.setdefault(depth[n], []).append(n)
    pos = {}
    for d, ns in cols.items():
        for i, n in enumerate(ns):
            pos[n] = (float(d), -(i - (len(ns) - 1) / 2.0))
    return pos


def plot_graphs(res, ax=None, path: Optional[str] = None):
    """Two panels: the relaxed graph with every edge (grey) and the kept edges (blue, width
    proportional to ``|w|`` of the full fit); removed states in grey. Returns the figure."""
    import matplotlib.pyplot as plt

    rg = res.relaxed
    gnames = [rg.group_name(g) for g in range(rg.n_groups)]
    inputs = list(rg.input_names)
    nodes = inputs + gnames
    member = {rg.names[s]: rg.group_name(g) for g, ms in enumerate(rg.groups) for s in ms}
    member.update({x: x for x in inputs})
    all_e = sorted({(member[f], g) for f, g in res.edge_weights})
    wmax = max([v for v in res.edge_weights.values()] + [1e-12])
    strength: Dict[Tuple[str, str], float] = {}
    for (f, g), v in res.edge_weights.items():
        strength[(member[f], g)] = max(strength.get((member[f], g), 0.0), v)
    kept = {(member[f], g) for f, g in res.kept_edges}
    removed_nodes = {member[s] for s in res.removed_states}
    pos = _layers(nodes, all_e, inputs)
    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    else:
        axes = ax
        fig = axes[0].figure
    for panel, title in zip(axes, ("relaxed graph (before)", f"kept graph (lambda1={res.lam1:g})")):
        after = panel is axes[1]
        for u, v in all_e:
            if after and (u, v) not in kept:
                continue
            (x0, y0), (x1, y1) = pos[u], pos[v]
            lw = 0.5 + 4.0 * strength.get((u, v), 0.0) / wmax if after else 0.8
            color = "tab:blue" if after else "0.6"
            if u == v:
                panel.add_patch(plt.Circle((x0, y0 + 0.18), 0.12, fill=False, lw=lw, color=color))
            else:
                panel.annotate(
                    "", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", lw=lw, color=color, shrinkA=12, shrinkB=12)
                )
        for n in nodes:
            x, y = pos[n]
            gone = after and n in removed_nodes
            face = "0.9" if gone else ("#ffe9b3" if n in inputs else "#cfe3ff")
            panel.text(x, y, n, ha="center", va="center", fontsize=8, color="0.6" if gone else "black",
                       bbox=dict(boxstyle="round", fc=face, ec="0.5"))  # fmt: skip
        panel.set_title(title)
        panel.set_axis_off()
        xs = [p[0] for p in pos.values()]
        ys = [p[1] for p in pos.values()]
        panel.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
        panel.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    if path:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig
