"""The app's answer for one image as a real browser shows it: the issue's screenshot with a real model.

The browser test (tests/test_app.py) checks the page with a tiny synthetic LeNet; this script makes the
screenshot the issue asks for, "a labelled prediction with its Grad-CAM", with the model the study chose.
It serves the app for ``--model`` on 127.0.0.1 (in this process, as the tests do), opens it in headless
Chromium (:func:`allstudy.testing.browser.screenshot_prediction`), uploads ``--image``, waits for the calibrated
probabilities, the verdict line and the Grad-CAM overlay, saves a full-page screenshot to ``--out``,
prints what the page showed, and stops the app.

    .venv/bin/python benchmarks/app_screenshot.py --model outputs/study-cpu/models/chosen \\
        --image DATA/Pro/WBC-Malignant-Pro-023.jpg --out outputs/screenshots/app-chosen.png

Choose an image of the model's test split (``OUTDIR/data/splits.csv``) so that the model has not seen it.
Needs Playwright and a Chromium (``make browser``); exits with status 2 and the reason otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (model.keras, model.json, ood.json)")
    parser.add_argument("--image", required=True, help="the field to upload")
    parser.add_argument("--out", required=True, help="where to save the screenshot (PNG)")
    parser.add_argument("--port", type=int, help="loopback port for the app (default: a free one)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds allowed for each wait in the browser")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from allstudy.testing.browser import screenshot_prediction, unavailable

    reason = unavailable()
    if reason:
        print(f"cannot take the screenshot: {reason}", file=sys.stderr)
        return 2
    if not Path(args.image).is_file():
        print(f"cannot take the screenshot: no image file {args.image}", file=sys.stderr)
        return 2

    from allstudy.serving.app import launch
    from allstudy.testing.servers import free_port

    app = launch(args.model, port=args.port or free_port(), prevent_thread_lock=True, quiet=True)
    try:
        if app.allstudy_dir is None:  # the app started without a model: its how-to page, nothing to upload
            print(
                f"cannot take the screenshot: no usable model in {args.model} (the app shows how to make one)",
                file=sys.stderr,
            )
            return 2
        shown = screenshot_prediction(app.local_url, args.image, args.out, timeout_s=args.timeout)
    finally:
        app.close()
    print(f"model: {args.model}\nimage: {args.image}\napp: {app.local_url}")
    print(f"verdict: {' / '.join(line for line in shown['verdict'].splitlines() if line.strip())}")
    print(f"label: {shown['label']}")
    print("probabilities: " + ", ".join(f"{name} {shown_p}" for name, shown_p in shown["probabilities"].items()))
    print(f"Grad-CAM shown: {shown['gradcam']}")
    print(f"screenshot: {shown['screenshot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
