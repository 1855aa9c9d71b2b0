"""What the out-of-distribution guard catches: a model folder's Predictor on altered test fields.

For each variant of the study's test fields (blurred, zoomed, grey, under-exposed, re-compressed) and
for inputs that are no Taleqani field (C-NMC cells, skimage photographs, the dataset's segmented
version), the share flagged "outside what this model was trained on", the share flagged by the focus
check, and the model's accuracy on the variant (all of it, and what the guard let through). The table
in docs/results.md comes from this script.

    .venv/bin/python benchmarks/ood_variants.py --study outputs/study-cpu --shared ../shared/data \\
        --out outputs/benchmarks/ood_variants.json
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _zoom(image, factor: int):
    w, h = image.size
    return image.crop(
        (w // 2 - w // (2 * factor), h // 2 - h // (2 * factor), w // 2 + w // (2 * factor), h // 2 + h // (2 * factor))
    )


def _jpeg(image, quality: int):
    from PIL import Image

    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _enlarged_jpeg(image, factor: int, quality: int):
    from PIL import Image

    return _jpeg(image.resize((image.width * factor, image.height * factor), Image.Resampling.BICUBIC), quality)


def variants(fields: list) -> dict:
    """name -> altered copies of the fields (PIL images)."""
    from PIL import Image, ImageFilter

    out = {"as they are": fields}
    for radius in (1, 1.5, 2, 3):
        out[f"Gaussian blur, radius {radius}"] = [f.filter(ImageFilter.GaussianBlur(radius)) for f in fields]
    for factor in (2, 3):
        out[f"zoomed {factor}x (centre crop)"] = [_zoom(f, factor) for f in fields]
    out["grey"] = [f.convert("L").convert("RGB") for f in fields]
    out["under-exposed (x0.6)"] = [Image.fromarray((np.asarray(f) * 0.6).astype(np.uint8)) for f in fields]
    for quality in (75, 50, 20):
        out[f"re-saved as JPEG quality {quality}"] = [_jpeg(f, quality) for f in fields]
    for quality in (75, 20):
        out[f"enlarged 2x, JPEG quality {quality}"] = [_enlarged_jpeg(f, 2, quality) for f in fields]
    return out


def measure(predictor, images: list, labels=None) -> dict:
    answers = predictor.predict_batch(images)
    flagged = np.array([a.verdict == "out-of-distribution" for a in answers])
    row = {
        "n": len(answers),
        "flagged": float(flagged.mean()),
        "flagged_by_focus": float(np.mean(["out of focus" in a.message for a in answers])),
        "flagged_by_compression": float(np.mean(["JPEG-compressed" in a.message for a in answers])),
    }
    if labels is not None:
        right = np.array([a.label == c for a, c in zip(answers, labels, strict=True)])
        row["accuracy"] = float(right.mean())
        row["accuracy_unflagged"] = float(right[~flagged].mean()) if (~flagged).any() else None
    return row


def main() -> None:
    import pandas as pd
    import skimage.data
    from PIL import Image

    from allstudy.core.atomic import read_json, write_json
    from allstudy.serving.predictor import Predictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="a study's output folder (data/ and models/chosen/)")
    parser.add_argument("--shared", help="folder with cnmc/ and all-taleqani-segmented/ (optional)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    study = Path(args.study)
    split = pd.read_csv(study / "data" / "splits.csv", dtype=str, keep_default_na=False)
    root = Path(read_json(study / "data" / "data.json")["root"])
    test = split[split["split"] == "test"]
    predictor = Predictor(study / "models" / "chosen")
    fields = [Image.open(root / p).convert("RGB") for p in test["path"]]
    rows = {name: measure(predictor, images, test["class"].tolist()) for name, images in variants(fields).items()}
    others = {
        "skimage photographs": [
            Image.fromarray(getattr(skimage.data, n)()).convert("RGB")
            for n in ("astronaut", "chelsea", "coffee", "rocket")
        ]
    }
    if args.shared:
        shared = Path(args.shared)
        others["C-NMC sample cells"] = [Image.open(p).convert("RGB") for p in sorted((shared / "cnmc").glob("*/*.bmp"))]
        others["the dataset's segmented fields (200)"] = [
            Image.open(p).convert("RGB") for p in sorted((shared / "all-taleqani-segmented").rglob("*.jpg"))[:200]
        ]
    rows.update({name: measure(predictor, images) for name, images in others.items() if images})

    print(
        f"{predictor.meta.get('arch')}, guard fitted on {predictor.guard.fit_info.get('n_train')} training fields; "
        f"{len(fields)} test fields"
    )
    print(f"{'input':40s} {'flagged':>8s} {'by focus':>9s} {'by JPEG':>8s} {'accuracy':>9s} {'unflagged':>10s}")
    for name, row in rows.items():
        accuracy = f"{row['accuracy']:9.1%}" if "accuracy" in row else " " * 9
        kept = row.get("accuracy_unflagged")
        print(
            f"{name:40s} {row['flagged']:8.1%} {row['flagged_by_focus']:9.1%} "
            f"{row['flagged_by_compression']:8.1%} {accuracy} "
            f"{'' if kept is None else format(kept, '10.1%')}"
        )
    if args.out:
        write_json(args.out, {"study": str(study), "rows": rows})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
