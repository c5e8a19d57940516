"""Subcommands that fetch or vet data and published models: noise-bank, fetch-model, explain-published, download, data."""

from __future__ import annotations

import json
from pathlib import Path

from core.cli.args import Subcommand, add_float, add_int, add_json, add_out, open_args_dataset, out_path
from core.cli.common import progress_bar


def noise_bank_args(p) -> None:
    add_int(p, "--candidates", 4, "quietest 5 s windows tried per recording (default 4)")
    add_float(p, "--threshold", 0.1, "highest BirdNET score of any animal class that counts as empty")
    add_out(p, help="CSV to write (default assets/noise/<dataset>_birdfree.csv)")


def cmd_noise_bank(args) -> int:
    from core.io.fileio import atomic_write_text
    from core.training.noisebank import bank_path, vet_noise_windows

    dataset = open_args_dataset(args)
    out = out_path(args.out or str(bank_path(dataset)))
    with progress_bar(desc="recordings", total=len(dataset.available())) as progress:
        table = vet_noise_windows(dataset, candidates=args.candidates, threshold=args.threshold, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.4g"))
    kept = table[table["kept"]]
    print(f"{len(kept)} of {len(table)} candidate windows kept (BirdNET < {args.threshold:g} for every animal class), "
          f"from {kept['recording_id'].nunique()} recordings; per split: "
          + ", ".join(f"{s} {int((kept['split'] == s).sum())}" for s in ("train", "val", "test")))
    print(f"written to {out}")
    return 0


def fetch_model_args(p) -> None:
    p.add_argument("name", help="audioprotopnet-{1,5,10,20}-birdset-xcl or convnext-base-birdset-xcl")
    p.add_argument("--dest", help="target folder (default checkpoints/published/NAME, not tracked by git)")


def cmd_fetch_model(args) -> int:
    from core.models.published import PUBLISHED_MODELS
    from core.models.published_io import fetch_model

    dest = Path(args.dest or Path("checkpoints") / "published" / args.name)
    print(f"downloading {PUBLISHED_MODELS.get(args.name, {}).get('repo', args.name)} (weights and config.json only) into {dest} ...")
    fetch_model(args.name, dest)
    print(f"done; explain a clip with: python -m core explain-published --model {dest} --audio FILE")
    return 0


def explain_published_args(p) -> None:
    p.add_argument("--model", required=True,
                   help="folder with model.safetensors and config.json (see fetch-model), e.g. checkpoints/published/audioprotopnet-5-birdset-xcl")
    p.add_argument("--audio", required=True)
    add_float(p, "--offset", 0.0, "start of the 5 s clip in the file, seconds")
    add_int(p, "--top-k", 3)
    add_int(p, "--prototypes", 3, "prototypes printed per class")
    add_json(p)


def cmd_explain_published(args) -> int:
    from core.errors import ParameterError
    from core.io.audio import load_audio
    from core.models.published_io import explain_clip, load_published

    if args.offset < 0:
        raise ParameterError(f"--offset must be >= 0 seconds, got {args.offset}")
    model = load_published(args.model)
    fc = model.config.frontend
    clip = load_audio(args.audio, sample_rate=fc.sample_rate, offset_s=args.offset, duration_s=fc.clip_seconds)
    res = explain_clip(model, clip.waveform, top_k=args.top_k)
    if args.json:
        print(json.dumps([{**c, "prototypes": [{k: v for k, v in p.items() if k != "map"} for p in c["prototypes"]]} for c in res],
                         indent=2))
        return 0
    print(f"{args.audio} from {args.offset:g} s ({fc.clip_seconds:g} s at {fc.sample_rate} Hz), model {args.model}")
    for c in res:
        print(f"  {c['class_name']}: score {c['score']:.3f}")
        for p in c["prototypes"][: args.prototypes]:
            print(f"    prototype {p['prototype']}: similarity {p['similarity']:.3f} x weight {p['weight']:.3f}, "
                  f"at {p['t_s']:.2f} s, {p['f_hz']:.0f} Hz")
    return 0


def download_args(p) -> None:
    p.add_argument("--dest", help="target directory (default: data/xc9 in the repository)")


def cmd_download(args) -> int:
    from core.io.data import REPO_ROOT, download_dataset

    dest = Path(args.dest or REPO_ROOT / "data" / "xc9")
    with progress_bar("rec", total=0) as progress:
        download_dataset(dest, progress=lambda done, total, rid: progress(rid, done, total))
    print(f"dataset ready in {dest}")
    return 0


def cmd_data(args) -> int:
    from core.io.data import candidate_data_dirs

    ds = open_args_dataset(args)
    print(f"{ds.root}: {len(ds)} recordings ({len(ds.available())} on disk), {len(ds.class_names)} classes, {ds.split_scheme} split")
    for s in ("train", "val", "test"):
        print(f"  {s}: {len(ds.split(s))} recordings")
    print("search order: " + ", ".join(str(p) for p in candidate_data_dirs(args.data_dir)))
    return 0


# the subcommands of this module, by name
COMMANDS = {
    "noise-bank": Subcommand("vet the quietest windows of every recording with BirdNET: the bird-free site-noise bank", noise_bank_args, cmd_noise_bank),
    "fetch-model": Subcommand("download a published BirdSet checkpoint (AudioProtoPNet-P-BirdSet-XCL, ConvNeXT-Base-BirdSet-XCL; network)",
                              fetch_model_args, cmd_fetch_model, dataset=False),
    "explain-published": Subcommand("top classes of a clip and where their prototypes fire (published AudioProtoPNet)",
                                    explain_published_args, cmd_explain_published, dataset=False),
    "download": Subcommand("download the xc9 recordings from xeno-canto (network)", download_args, cmd_download, dataset=False),
    "data": Subcommand("show which dataset is found and its splits", None, cmd_data),
}
