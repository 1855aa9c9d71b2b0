"""Google Colab and accelerators: what a notebook changes when it runs in Colab, and nothing elsewhere.

Every notebook of ``notebooks/`` opens (from the README's badges) with the same set-up cell,
written by :func:`write_setup_cells` from :data:`REPOSITORY`:

* in Colab (``"google.colab" in sys.modules``) it pip-installs allstudy from the git repository
  (Colab's own TensorFlow is kept), then :func:`setup` looks at the accelerator and chooses the
  settings of a GPU study: the ``paper`` profile, ImageNet weights (downloaded; Colab is online),
  the ``tf.distribute`` strategy for the devices there, outputs under the working folder;
* anywhere else (papermill, Jupyter, the tests) the cell imports :func:`setup`, which returns
  inactive settings without importing TensorFlow: nothing changes.

The notebook's ``parameters`` cell comes next and keeps its literal defaults; it ends with::

    if colab.active: out_dir, profile = colab.out_dir, colab.profile

so in Colab these choices *are* the defaults, and papermill, which injects its values in a cell
after the ``parameters`` cell, still overrides them: an explicit ``--profile cpu`` stays ``cpu``.
Only the names a notebook has are assigned (:data:`CHOSEN`).

ImageNet weights: the ``paper`` profile gives ``weights="imagenet"`` to every transfer architecture
(resnet50, the MobileNets, EfficientNet) and trains the others from scratch, as the papers did; the
03 notebook's ``weights = None`` means "the profile's", so Colab needs no weights override (forcing
``"imagenet"`` on LeNet would be an error, on VGG16 a departure from the paper). :func:`setup` records
the choice in :attr:`ColabSettings.weights` and tests check the profile agrees.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

#: The git repository the notebooks install from and the README's badges open. PLACEHOLDER: no
#: repository URL is recorded for this project yet; replace the owner here, then run
#: ``python -m allstudy.study.colab`` to rewrite the notebooks' set-up cells (tests/test_colab.py checks
#: that the notebooks and the README's badges agree with it).
REPOSITORY = "https://github.com/REPLACE-WITH-GITHUB-OWNER/allstudy"
BRANCH = "main"
#: Tag and id of the set-up cell (the first code cell of every notebook).
SETUP_TAG = "colab-setup"
#: The notebook parameters Colab chooses (each notebook gets those it has).
CHOSEN = ("out_dir", "profile", "strategy")
#: What the parameters cell's closing block says.
_PARAMETERS_NOTE = (
    "# In Colab, the set-up cell's choices replace these defaults; papermill injects its values "
    "after this cell,\n# so an explicit parameter still wins.\n"
)


@dataclass(frozen=True)
class ColabSettings:
    """What :func:`setup` chose. Inactive (every choice None) outside Colab."""

    active: bool = False
    profile: str | None = None  # "paper"
    weights: str | None = None  # "imagenet": what the paper profile gives every transfer architecture
    strategy: str | None = None  # None (one device: TensorFlow's default), "mirrored" (several GPUs) or "tpu"
    out_dir: str | None = None  # <working folder>/outputs (Colab: /content/outputs)
    gpus: tuple[str, ...] = field(default_factory=tuple)
    accelerator: str = "none"  # "gpu", "tpu" or "none"
    message: str = ""


def in_colab() -> bool:
    """True inside a Google Colab runtime (its kernel has imported ``google.colab``)."""
    return "google.colab" in sys.modules


def _tpu_present() -> bool:
    return bool(os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME"))


def _gpu_names() -> list[str]:
    """The physical GPUs TensorFlow sees, named, with memory growth on (so the app and Grad-CAM can share)."""
    import tensorflow as tf

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # already initialised: keep TensorFlow's own setting
            pass
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except (RuntimeError, ValueError):
            details = {}
        names.append(details.get("device_name") or gpu.name)
    return names


def setup(
    active: bool | None = None,
    gpus: list[str] | None = None,
    tpu: bool | None = None,
    out_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> ColabSettings:
    """Choose the settings of a Colab study; outside Colab, return inactive settings and change nothing.

    ``active``, ``gpus`` and ``tpu`` default to what the runtime shows (``gpus`` lists TensorFlow's
    physical GPUs, with memory growth turned on); ``out_dir`` to ``<working folder>/outputs``.
    """
    active = in_colab() if active is None else active
    if not active:
        return ColabSettings()
    gpus = _gpu_names() if gpus is None else list(gpus)
    tpu = _tpu_present() if tpu is None else tpu
    if gpus:
        accelerator, strategy = "gpu", ("mirrored" if len(gpus) > 1 else None)
        where = f"{len(gpus)} GPU(s): {', '.join(gpus)}" + (" (MirroredStrategy)" if len(gpus) > 1 else "")
    elif tpu:
        accelerator, strategy, where = "tpu", "tpu", "a TPU (TPUStrategy)"
    else:
        accelerator, strategy = "none", None
        where = (
            "NO accelerator: the paper profile is slow on a CPU. Choose Runtime > Change runtime type > "
            'a GPU, or set profile = "cpu" in the parameters cell'
        )
    settings = ColabSettings(
        active=True,
        profile="paper",
        weights="imagenet",
        strategy=strategy,
        out_dir=str(Path(out_dir) if out_dir else Path.cwd() / "outputs"),
        gpus=tuple(gpus),
        accelerator=accelerator,
    )
    message = (
        f"Colab: {where}; profile paper, ImageNet weights for the transfer models (downloaded), "
        f"outputs in {settings.out_dir}. Parameters set in the parameters cell (or by papermill) win."
    )
    settings = replace(settings, message=message)
    if verbose:
        print(message)
    return settings


# ----------------------------------------------------------------------------- the notebooks and README


def colab_url(notebook: str, repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """The address that opens ``notebooks/<notebook>.ipynb`` of the repository in Colab."""
    path = re.sub(r"^https://github\.com/", "", repository).rstrip("/")
    return f"https://colab.research.google.com/github/{path}/blob/{branch}/notebooks/{notebook}.ipynb"


def badge(notebook: str) -> str:
    """The README's "Open in Colab" badge (Markdown) for a notebook."""
    return f"[![Open {notebook} in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook)})"


def pip_requirement(repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """What the set-up cell pip-installs: the package from the git repository (no TensorFlow extra)."""
    return f"allstudy @ git+{repository}@{branch}"


def setup_cell_source() -> str:
    """The source of every notebook's set-up cell."""
    return (
        "# Set-up. In Google Colab: install allstudy from its repository and choose the GPU, ImageNet weights and\n"
        "# the paper profile (allstudy.study.colab.setup). Anywhere else this cell changes nothing.\n"
        "import importlib.util\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules and importlib.util.find_spec("allstudy") is None:\n'
        f'    package = "{pip_requirement()}"\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", package], check=True)\n'
        "    importlib.invalidate_caches()\n"
        "\n"
        "from allstudy.study.colab import setup\n"
        "\n"
        "colab = setup()"
    )


def _parameter_names(source: str) -> list[str]:
    return re.findall(r"^([A-Za-z_]\w*)\s*=", source, flags=re.MULTILINE)


def parameters_block(names: list[str]) -> str:
    """The closing block of a parameters cell whose parameters are ``names``; "" if Colab chooses none of them."""
    chosen = [n for n in CHOSEN if n in names]
    if not chosen:
        return ""
    # One line: papermill's parameter inspection reads a line without "=" as part of the previous parameter.
    return _PARAMETERS_NOTE + "if colab.active: " + ", ".join(chosen) + " = " + ", ".join(f"colab.{n}" for n in chosen)


def _without_block(source: str) -> str:
    return source.split(_PARAMETERS_NOTE)[0].rstrip("\n")


def with_setup_cell(notebook):
    """The notebook (nbformat node) with the set-up cell first among the code cells and the parameters cell's
    closing block; idempotent, cell ids kept."""
    import nbformat

    cells = [c for c in notebook.cells if SETUP_TAG not in c.get("metadata", {}).get("tags", [])]
    index = next((i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    parameters = cells[index]
    own = _without_block(parameters.source)
    block = parameters_block(_parameter_names(own))
    parameters.source = own + ("\n" + block if block else "")
    setup_cell = nbformat.v4.new_code_cell(setup_cell_source(), id=SETUP_TAG, metadata={"tags": [SETUP_TAG]})
    notebook.cells = cells[:index] + [setup_cell] + cells[index:]
    return notebook


def write_setup_cells(folder: str | os.PathLike) -> list[Path]:
    """Give every notebook of ``folder`` the set-up cell (see :func:`with_setup_cell`); return those changed."""
    import nbformat

    changed = []
    for path in sorted(Path(folder).glob("*.ipynb")):
        before = path.read_text(encoding="utf-8")
        after = nbformat.writes(with_setup_cell(nbformat.reads(before, as_version=4))) + "\n"
        if after != before:
            path.write_text(after, encoding="utf-8")
            changed.append(path)
    return changed


if __name__ == "__main__":  # python -m allstudy.study.colab: rewrite the notebooks' set-up cells from REPOSITORY
    for written in write_setup_cells(Path(__file__).resolve().parents[2] / "notebooks"):
        print(f"updated {written}")
