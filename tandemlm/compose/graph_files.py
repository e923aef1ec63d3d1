"""A pipeline's graph as a file: Mermaid text (`.mmd`/`.md`), an HTML page that renders it
(`.html`), or a picture (`.png`, drawn with matplotlib, no browser needed).

    write_graph(pipe, "graph.html")   # tandem graph PROGRAM --out graph.html
"""

from __future__ import annotations

import html
from pathlib import Path

from tandemlm.compose.graph import stages
from tandemlm.compose.node import Node
from tandemlm.runtime import ConfigError
from tandemlm.runtime.files import atomic_write

#: the Mermaid release the HTML page loads (from the jsDelivr CDN, when the page is opened)
MERMAID_JS = "https://cdn.jsdelivr.net/npm/mermaid@11/dist/mermaid.esm.min.mjs"
FORMATS = (".mmd", ".md", ".html", ".png")


def write_graph(pipeline, path: str | Path) -> Path:
    """Write `pipeline`'s graph to `path`, in the format its suffix names (`FORMATS`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"cannot write a graph to '{path}': give a file ending in "
                          f"{', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = pipeline.to_mermaid()
    if suffix == ".mmd":
        atomic_write(path, text + "\n")
    elif suffix == ".md":
        atomic_write(path, f"# {pipeline.name}\n\n```mermaid\n{text}\n```\n")
    elif suffix == ".html":
        atomic_write(path, _page(pipeline.name, text))
    else:
        _png(pipeline, path)
    return path


def _page(name: str, text: str) -> str:
    source = html.escape(text)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(name)}: graph</title></head>
<body style="font-family: sans-serif">
<h1>{html.escape(name)}</h1>
<pre class="mermaid">{source}</pre>
<details><summary>Mermaid source</summary><pre>{source}</pre></details>
<script type="module">
import mermaid from "{MERMAID_JS}";
mermaid.initialize({{startOnLoad: true, securityLevel: "strict"}});
</script>
</body></html>
"""


def _flat(node: Node, prefix: str = "") -> list[tuple[str, Node]]:
    """(qualified name, node) for a node's leaves: a composite's children, recursively."""
    children = node.children() if callable(getattr(node, "children", None)) else []
    name = f"{prefix}{node.name}"
    if not children:
        return [(name, node)]
    return [leaf for child in children for leaf in _flat(child, f"{name}/")]


def _png(pipeline, path: Path) -> None:
    """Stages left to right; a composite's children stacked in its stage, boxed together."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    columns = [[("input", f) for f in pipeline.input_fields]]
    columns += [[leaf for name in stage for leaf in _flat(pipeline.nodes[name])]
                for stage in stages(pipeline.graph)]
    height = max(len(c) for c in columns)
    fig, ax = plt.subplots(figsize=(3.2 * len(columns), 1.1 * height + 1))
    where: dict[str, tuple[float, float]] = {}
    for x, column in enumerate(columns):
        for y, (name, item) in enumerate(column):
            pos = (x, height - 1 - y - (height - len(column)) / 2)
            if name == "input":
                where[f"in:{item}"] = pos
                ax.text(*pos, item, ha="center", va="center",
                        bbox={"boxstyle": "round", "fc": "#eef"})
                continue
            where.setdefault(name.split("/")[0], pos)
            model = item.model.name if hasattr(item.model, "name") else item.model
            label = f"{name}\n{model or getattr(item, 'unbound_model', None) or '(python)'}"
            ax.text(*pos, label, ha="center", va="center", fontsize=8,
                    bbox={"boxstyle": "square", "fc": "#ffd" if "/" in name else "#fff"})
    for field in pipeline.input_fields:
        for node in pipeline.nodes.values():
            if field in node.input_fields:
                _arrow(ax, where[f"in:{field}"], where[node.name], field)
    for u, v, data in pipeline.graph.edges(data=True):
        _arrow(ax, where[u], where[v], ", ".join(data["fields"]))
    ax.set_xlim(-0.6, len(columns) - 0.4)
    ax.set_ylim(-0.8, height - 0.2)
    ax.axis("off")
    ax.set_title(pipeline.name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], label: str) -> None:
    ax.annotate("", xy=(end[0] - 0.3, end[1]), xytext=(start[0] + 0.3, start[1]),
                arrowprops={"arrowstyle": "->", "color": "#555"})
    ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.08, label, fontsize=7,
            ha="center", color="#555")
