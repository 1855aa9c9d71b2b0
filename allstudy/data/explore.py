"""Figures and tables of the exploration notebook (01_explore): counts, samples, statistics, duplicates."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.container import BarContainer

from allstudy.data.classes import display_name
from allstudy.data.duplicates import groups_of
from allstudy.data.images import read_rgb


def class_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Files per class: usable, with a problem, and in total."""
    usable = manifest["problem"] == ""
    counts = (
        pd.DataFrame(
            {"usable": manifest[usable]["class"].value_counts(), "problem": manifest[~usable]["class"].value_counts()}
        )
        .fillna(0)
        .astype(int)
    )
    counts["total"] = counts.sum(axis=1)
    counts.index.name = "class"
    return counts.sort_index()


def plot_class_counts(manifest: pd.DataFrame) -> plt.Figure:
    """A bar chart of usable images per class."""
    counts = class_counts(manifest)["usable"]
    fig, ax = plt.subplots(figsize=(6, 3))
    sns.barplot(x=[display_name(c) for c in counts.index], y=counts.values, ax=ax, color="#7b68a6")
    ax.bar_label(cast(BarContainer, ax.containers[0]))
    ax.set(ylabel="images", title="Usable images per class")
    fig.tight_layout()
    return fig


def thumbnail_grid(root: str | os.PathLike, rows: list[list[str]], row_labels: list[str], width: int) -> plt.Figure:
    """Fields shown as a grid: one row per list of paths (at most ``width`` each), labelled on the left."""
    fig, axes = plt.subplots(len(rows), width, figsize=(1.9 * width, 2.0 * len(rows)), squeeze=False)
    for row, (paths, label) in enumerate(zip(rows, row_labels, strict=True)):
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([]), ax.set_yticks([])
            if col < len(paths):
                ax.imshow(read_rgb(Path(root) / paths[col]))
                ax.set_title(Path(paths[col]).name, fontsize=6)
            else:
                ax.axis("off")
        axes[row][0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig


def sample_grid(root: str | os.PathLike, manifest: pd.DataFrame, per_class: int = 6, seed: int = 0) -> plt.Figure:
    """A grid of randomly chosen usable fields, one row per class."""
    usable = manifest[manifest["problem"] == ""]
    classes = sorted(usable["class"].unique())
    rows = []
    for label in classes:
        members = usable[usable["class"] == label]
        rows.append(members.sample(min(per_class, len(members)), random_state=seed)["path"].tolist())
    return thumbnail_grid(root, rows, [display_name(c) for c in classes], per_class)


def _statistics_of(path: Path) -> dict:
    image = read_rgb(path)
    pixels = np.asarray(image.resize((64, 64)), dtype=np.float32).reshape(-1, 3)
    mean, std = pixels.mean(axis=0), pixels.std(axis=0)
    return {"mean_r": mean[0], "mean_g": mean[1], "mean_b": mean[2], "std_r": std[0], "std_g": std[1], "std_b": std[2]}


def image_statistics(root: str | os.PathLike, manifest: pd.DataFrame, workers: int | None = None) -> pd.DataFrame:
    """Per usable image: class, width, height, file size and RGB mean/std (on a 64 x 64 thumbnail)."""
    usable = manifest[manifest["problem"] == ""].reset_index(drop=True)
    paths = [Path(root) / p for p in usable["path"]]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        stats = pd.DataFrame(list(pool.map(_statistics_of, paths)))
    stats.insert(0, "path", usable["path"])
    stats.insert(1, "class", usable["class"])
    stats.insert(2, "width", usable["width"].astype(int))
    stats.insert(3, "height", usable["height"].astype(int))
    stats.insert(4, "kbytes", [round(p.stat().st_size / 1024, 1) for p in paths])
    return stats


def plot_colour_statistics(stats: pd.DataFrame) -> plt.Figure:
    """Per-class distributions of each channel's mean: a colour shortcut shows as separated boxes."""
    long = stats.melt(
        id_vars=["class"], value_vars=["mean_r", "mean_g", "mean_b"], var_name="channel", value_name="mean intensity"
    )
    fig, ax = plt.subplots(figsize=(7, 3))
    sns.boxplot(data=long, x="channel", y="mean intensity", hue="class", ax=ax, fliersize=1, palette="Set2")
    ax.set_title("Mean intensity per channel and class")
    ax.legend(title="class", bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def colour_shortcut_accuracy(stats: pd.DataFrame, seed: int = 0) -> float:
    """Cross-validated accuracy of predicting the class from RGB means and stds alone (a shortcut check)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = stats[["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b"]].to_numpy()
    folds = int(min(5, stats["class"].value_counts().min()))
    if folds < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return float(cross_val_score(model, features, stats["class"], cv=folds).mean())


def duplicate_gallery(
    root: str | os.PathLike, groups: list[list[str]], max_groups: int = 6, max_members: int = 6
) -> plt.Figure | None:
    """Thumbnails of duplicate/overlap groups, one row per group (largest first); None if there are none."""
    if not groups:
        return None
    shown = groups[:max_groups]
    width = min(max_members, max(len(g) for g in shown))
    return thumbnail_grid(root, [g[:width] for g in shown], [f"group of {len(g)}" for g in shown], width)


def duplicate_summary(manifest: pd.DataFrame, links: pd.DataFrame) -> dict:
    """Exact and all duplicate groups, group sizes (size -> count), images in groups, and cross-class groups."""
    groups = groups_of(links)
    label = dict(zip(manifest["path"], manifest["class"], strict=True))
    sizes = Counter(len(g) for g in groups)
    return {
        "exact": groups_of(links, ["exact"]),
        "groups": groups,
        "sizes": dict(sorted(sizes.items())),
        "in_groups": sum(s * n for s, n in sizes.items()),
        "cross_class": [g for g in groups if len({label[p] for p in g}) > 1],
    }


def flow_counts(manifest: pd.DataFrame, links: pd.DataFrame, split: pd.DataFrame) -> dict:
    """The numbers of the data-flow diagram: files found, left out, grouped, and per split and class."""
    problems = int((manifest["problem"] != "").sum())
    unlabelled = int(((manifest["problem"] == "") & (manifest.get("part", "") == "unlabelled")).sum())
    groups = groups_of(links)
    subjects = int(split.loc[split["subject"] != "", "subject"].nunique()) if "subject" in split else 0
    return {
        "files": int(len(manifest)),
        "problems": problems,
        "unlabelled": unlabelled,
        "usable": int(len(split)),
        "duplicate_groups": len(groups),
        "in_duplicate_groups": sum(len(g) for g in groups),
        "subjects": subjects,
        "independent_groups": int(split["group"].nunique()),
        "splits": {
            name: {str(c): int(n) for c, n in rows["class"].value_counts().sort_index().items()}
            for name, rows in split.groupby("split")
        },
    }


def plot_data_flow(manifest: pd.DataFrame, links: pd.DataFrame, split: pd.DataFrame) -> plt.Figure:
    """The flow of the data as a diagram: files found, problems left out, duplicate/overlap groups, and the
    train/validation/test images per class (the counts of :func:`flow_counts`)."""
    counts = flow_counts(manifest, links, split)
    fig, ax = plt.subplots(figsize=(9.0, 5.2))
    ax.set_xlim(0, 3)
    ax.set_ylim(0, 4)
    ax.axis("off")
    box = {"boxstyle": "round,pad=0.5", "facecolor": "#f3f6fb", "edgecolor": "#4a6fa5"}
    out_box = {**box, "facecolor": "#fbf1f1", "edgecolor": "#a54a4a"}

    def node(x: float, y: float, text: str, style: dict = box) -> None:
        ax.text(x, y, text, ha="center", va="center", fontsize=9, bbox=style)

    def arrow(start: tuple[float, float], end: tuple[float, float]) -> None:
        ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": "#555555"})

    node(1.5, 3.6, f"{counts['files']} files found")
    left_out = [f"{counts['problems']} with a problem (unreadable, not an image, ...)"]
    if counts["unlabelled"]:
        left_out.append(f"{counts['unlabelled']} unlabelled (scored, never split)")
    node(2.45, 2.85, "left out:\n" + "\n".join(left_out), out_box)
    grouped = (
        f"{counts['usable']} usable images\n{counts['in_duplicate_groups']} of them in {counts['duplicate_groups']} "
        f"duplicate / overlap groups"
        + (f"\n{counts['subjects']} subjects, each kept in one split" if counts["subjects"] else "")
        + f"\n{counts['independent_groups']} independent groups to split"
    )
    node(1.2, 2.3, grouped)
    arrow((1.5, 3.4), (1.25, 2.75))
    arrow((1.6, 3.4), (2.2, 3.15))
    names = {"train": "training", "val": "validation", "test": "test"}
    for x, name in zip((0.45, 1.5, 2.55), names, strict=True):
        per_class = counts["splits"].get(name, {})
        lines = [f"{display_name(c)}: {n}" for c, n in per_class.items()]
        node(x, 0.75, f"{names[name]}: {sum(per_class.values())}\n" + "\n".join(lines))
        arrow((1.2, 1.75), (x, 1.3))
    fig.tight_layout()
    plt.close(fig)
    return fig
