"""The home page's picture and the guided demo's recorded outcome, from real data (not a benchmark: a generator).

Runs the guided demonstration (:func:`core.studies.demo.run_demo`) with the default model on the xc9 test split:
the window where the model is surest it hears a Sedge Warbler, then the demo's attack towards Marsh Warbler at
each change size the demo offers, quietest first, until the model names Marsh Warbler. Writes

- ``assets/home/demo.json``: the outcome (:class:`core.studies.demo.DemoRecord`), which the home page, the Guided
  demo page and the README state and ``tests/test_demo.py`` recomputes;
- ``assets/home/home.png``: the clean window's spectrogram with the Sedge Warbler prototype that fired, beside the
  attacked window's spectrogram with the prototype of the species the model names after the change. The figures
  are the dashboard's own (:mod:`ui.plots`), drawn by Debian's chromium through Playwright (no browser download).

Run from the repository root: ``python bench/home_figure.py`` (needs the dataset, the shipped checkpoints and
``/usr/bin/chromium``; about 1-4 minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import html
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.field.analyze import species_names  # noqa: E402
from core.field.inference import analyze_waveform  # noqa: E402
from core.io.audio import load_audio  # noqa: E402
from core.io.data import Dataset, find_data_dir  # noqa: E402
from core.models.registry import DEFAULT_MODEL, has_prototypes, load_checkpoint  # noqa: E402
from core.studies.demo import RECORD_PATH, demo_attack, demo_window, read_demo_record, run_demo, strongest_prototype, write_demo_record  # noqa: E402
from core.studies.embeddings import model_fingerprint  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PICTURE = ROOT / "assets" / "home" / "home.png"
#: CSS size of the picture [px] and the device scale of the PNG (1.5: crisp on the dashboard's ~800 px wide column).
WIDTH, HEIGHT, SCALE = 1100, 370, 1.5


def panel(model, window, analysis, class_index: int, *, title: str) -> str:
    """One spectrogram with the strongest prototype of ``class_index`` as HTML (a static plotly figure)."""
    import plotly.io as pio

    from ui.plots import logmel_db, similarity_overlay

    fe = model.config.frontend
    j = strongest_prototype(model, analysis.prototype_activations[0], class_index)
    fig = similarity_overlay(logmel_db(window, fe), analysis.similarity_maps[0, j], fe, title="", height=290)
    fig.update_traces(showscale=False)
    fig.update_layout(width=480, font=dict(size=15), margin=dict(l=70, r=10, t=10, b=45))
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, config={"staticPlot": True, "displayModeBar": False})


def draw(model, record, window, adv, out: Path) -> None:
    """Render the two panels and the captions to ``out`` (PNG) with chromium."""
    import plotly.offline
    from playwright.sync_api import sync_playwright

    classes = list(model.config.class_names)
    names = {c: e for c, (_, e) in species_names(classes, model).items()}
    clean, after = analyze_waveform(model, window), analyze_waveform(model, adv)
    a = record.outcome
    src, now = classes.index(record.clean_top), classes.index(a.top)
    colour = "#b00020" if a.flipped else "#1b5e20"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><script>{plotly.offline.get_plotlyjs()}</script>
<style>body{{margin:0;font-family:'DejaVu Sans',sans-serif;background:#fff;color:#222;width:{WIDTH}px}}
.row{{display:flex;align-items:center;justify-content:space-between;padding:8px 14px 0}}
.col{{width:480px}} h2{{font-size:22px;margin:0 0 2px}} p{{font-size:15px;margin:0;color:#555}}
.mid{{width:90px;text-align:center;font-size:15px;color:#444}} .arrow{{font-size:44px;line-height:1}}</style></head>
<body><div class="row">
<div class="col"><h2 style="color:#1b5e20">Recording: {html.escape(names[record.clean_top])}, score {record.clean_score:.2f}</h2>
<p>red: where its best {html.escape(names[record.clean_top])} pattern matches</p>
{panel(model, window, clean, src, title="clean")}</div>
<div class="mid"><div class="arrow">&rarr;</div>+ a change<br><b>{a.snr_db:g} dB</b><br>quieter than<br>the song</div>
<div class="col"><h2 style="color:{colour}">After: {html.escape(names[a.top])}, score {a.top_score:.2f}</h2>
<p>red: where its best {html.escape(names[a.top])} pattern matches</p>
{panel(model, adv, after, now, title="attacked")}</div>
</div></body></html>"""
    with tempfile.TemporaryDirectory() as tmp:
        src_html = Path(tmp) / "home.html"
        src_html.write_text(page)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            tab = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT}, device_scale_factor=SCALE)
            tab.goto(src_html.as_uri())
            tab.wait_for_function("() => document.querySelectorAll('.main-svg').length >= 2")
            tab.wait_for_timeout(500)
            out.parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": WIDTH, "height": HEIGHT})
            browser.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint (default {DEFAULT_MODEL}; the picture needs prototypes)")
    ap.add_argument("--record", type=Path, default=RECORD_PATH, help="where the outcome JSON goes")
    ap.add_argument("--picture", type=Path, default=PICTURE, help="where the PNG goes")
    ap.add_argument("--picture-only", action="store_true",
                    help="redraw the picture from the stored record (one attack instead of up to five)")
    args = ap.parse_args(argv)
    model = load_checkpoint(args.model, device="cpu")
    root = find_data_dir()
    if root is None:
        sys.exit("error: the xc9 dataset is not found (see the README's Data section)")
    start = time.perf_counter()
    if args.picture_only:
        record = read_demo_record(args.record)
        if record.model != args.model or record.fingerprint != model_fingerprint(model):
            sys.exit(f"error: {args.record} was made with other weights than {args.model}'s: run without --picture-only")
        sr = model.config.frontend.sample_rate
        rec = next(r for r in Dataset(root).recordings if r.recording_id == record.recording_id)
        full = load_audio(str(rec.path), sample_rate=sr, duration_s=rec.duration_s).waveform
        window = demo_window(full, round(record.start_s * sr), model.config.window_samples)
        adv, _ = demo_attack(model, window, record.default_snr_db)
        draw(model, record, window, adv, args.picture)
        print(f"written {args.picture} ({time.perf_counter() - start:.0f} s)")
        return
    record, window, adv = run_demo(model, Dataset(root), model_name=args.model,
                                   progress=lambda m: print(f"{time.perf_counter() - start:6.1f} s  {m}", flush=True))
    print(f"written {write_demo_record(record, args.record)}: default change {record.default_snr_db:g} dB, "
          f"{record.clean_top} {record.clean_score:.2f} -> {record.outcome.top} {record.outcome.top_score:.2f} "
          f"(measured SNR {record.outcome.measured_snr_db:.1f} dB; {time.perf_counter() - start:.0f} s)")
    if has_prototypes(model.config):
        draw(model, record, window, adv, args.picture)
        print(f"written {args.picture}")
    else:
        print(f"{args.model} has no prototypes: no picture drawn")


if __name__ == "__main__":
    main()
