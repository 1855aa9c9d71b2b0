"""Executed notebooks rendered as self-contained HTML: code hidden, figures inline, progress logs left out."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter


def _without_stderr(cell):
    """A code cell without its stderr streams (progress bars, TensorFlow's start-up logs): the report shows
    results; the executed notebook keeps everything."""
    if cell.cell_type == "code":
        cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
    return cell


def render_html(notebook: str | os.PathLike) -> str:
    """An executed notebook as a self-contained HTML page: code hidden, figures inline."""
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    node = nbformat.read(str(notebook), as_version=4)
    node.cells = [_without_stderr(cell) for cell in node.cells]
    body, _ = exporter.from_notebook_node(node)
    return body


def render_report(notebooks: list[Path], title: str = "allstudy report") -> str:
    """The executed notebooks as one self-contained HTML page, in order: code hidden, figures inline.

    The parameters cells (the defaults and papermill's injected values) are left out; each notebook's
    own first heading opens its section.
    """
    merged = nbformat.v4.new_notebook()
    merged.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    merged.cells.append(
        nbformat.v4.new_markdown_cell(f"# {title}\n\n" + "\n".join(f"- {Path(n).stem}" for n in notebooks))
    )
    for number, notebook in enumerate(notebooks):
        for index, cell in enumerate(nbformat.read(str(notebook), as_version=4).cells):
            tags = set(cell.get("metadata", {}).get("tags", []))
            if tags & {"parameters", "injected-parameters"}:
                continue
            cell["id"] = f"n{number}-c{index}"  # unique across the merged notebooks
            merged.cells.append(_without_stderr(cell))
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(merged, resources={"metadata": {"name": title}})
    return body
