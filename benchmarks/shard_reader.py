"""The shard reader against the folder reader, on the same JPEGs: images/s of pretraining's input
pipeline (decode, random resized crop to 224 px, flip; batches from the loader's workers), with
the ImageNet config's loader workers.

    python benchmarks/shard_reader.py --photos ../shared/data/camvid-180x240.tar.gz
    python benchmarks/shard_reader.py --photos DIR_OF_JPEGS --images 3200 --write docs/benchmarks.md

The images are real photographs (any folder or tarball of JPEGs) resized to 500 x 375, about the
mean ImageNet size, and saved as JPEG at quality 90: the folder reader opens one file per image,
the shard reader streams ``iwm data pack``'s shards of the same files. Both passes read the page
cache (each reader's files are read once before it is timed), so this measures the readers, not
the disk. Each figure is the best of ``--repeats`` passes, the two readers interleaved.
"""

from __future__ import annotations

import argparse
import io
import platform
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from iwm import config
from iwm.data import ResumableSampler, build_dataset, get_format
from iwm.data.folders import IMAGE_EXTENSIONS
from iwm.data.pack import pack


def photos(source: Path) -> list[Image.Image]:
    """The photographs in a folder or a tarball, decoded."""
    if source.is_dir():
        return [Image.open(p).convert("RGB") for p in sorted(source.rglob("*"))
                if p.suffix.lower() in IMAGE_EXTENSIONS]
    out = []
    with tarfile.open(source) as tar:
        for m in tar:
            if m.isfile() and Path(m.name).suffix.lower() in (".jpg", ".jpeg") and "/images/" in f"/{m.name}":
                out.append(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"))
    return out


def make_folder(root: Path, source: Path, n: int, classes: int = 10) -> None:
    """``n`` JPEGs of 500 x 375 in ``classes`` class folders (train/), and 10 in val/."""
    pics = photos(source)
    if not pics:
        raise SystemExit(f"no JPEG photographs in {source}")
    for i in range(n + 10):
        split = "train" if i < n else "val"
        pic = pics[i % len(pics)]
        if (i // len(pics)) % 2:  # a second pass over the photographs: mirrored, so no file repeats
            pic = pic.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        d = root / split / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        pic.resize((500, 375), Image.Resampling.BILINEAR).save(d / f"{i:06d}.jpg", quality=90)


def images_per_s(loader: DataLoader, warm: int = 1) -> float:
    """Images/s over the loader's batches after the first ``warm`` (the workers' start-up)."""
    it = iter(loader)
    for _ in range(warm):
        next(it)
    n, t0 = 0, time.perf_counter()
    for batch in it:
        n += len(batch[0])
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, required=True, help="a folder or tarball of JPEG photographs")
    ap.add_argument("--images", type=int, default=3200)
    ap.add_argument("--batch", type=int, default=64, help="per process (the config's 256 needs 2,560 images a "
                                                          "pass just to give each of its 10 workers one batch)")
    ap.add_argument("--shard-size", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", type=Path, default=None, help="append the table to this markdown file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = config.load("src/iwm/configs/imagenet_vitb16.yaml")
    workers = cfg.data.num_workers
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = Path(tmp) / "folder", Path(tmp) / "shards"
        make_folder(folder, args.photos, args.images)
        pack(str(folder), shards, args.shard_size, progress=False)
        common = [f"data.batch_size={args.batch}", f"data.num_workers={workers}"]
        folder_cfg = config.load("src/iwm/configs/imagenet_vitb16.yaml",
                                 ["data.dataset=folder", f"data.path={folder}", *common]).data
        shard_cfg = config.load("src/iwm/configs/imagenet_vitb16.yaml",
                                ["data.dataset=webdataset", f"data.path={shards}", *common]).data
        ds = build_dataset(folder_cfg, 0, "train")
        sampler = ResumableSampler(len(ds), args.batch)
        by_file = DataLoader(ds, batch_size=args.batch, sampler=sampler, num_workers=workers, drop_last=True)
        stream = get_format("webdataset").stream(shard_cfg, 0, 0, 1)
        by_shard = DataLoader(stream, batch_size=None, num_workers=workers)
        for p in [*folder.rglob("*.jpg"), *shards.glob("*.tar")]:  # both readers from the page cache
            p.read_bytes()
        rates: dict[str, list[float]] = {"folder": [], "shards": []}
        for r in range(args.repeats):
            sampler.set_epoch(r)
            stream.set_epoch(r, 0)
            rates["folder"].append(images_per_s(by_file))
            rates["shards"].append(images_per_s(by_shard))
    best = {k: max(v) for k, v in rates.items()}
    rows = [
        f"### Shard reader against folder reader, {platform.machine()} CPU, {torch.get_num_threads()} thread(s) in "
        f"the main process, {workers} loader workers (torch {torch.__version__}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d})", "",
        f"Command: `python benchmarks/shard_reader.py --photos {args.photos.name} --images {args.images} --batch "
        f"{args.batch} --shard-size {args.shard_size} --repeats {args.repeats}`", "",
        f"{args.images} JPEGs of 500 x 375 (quality 90), random resized crops to {cfg.data.image_size} px, batch "
        f"{args.batch}; shards of {args.shard_size}; best of {args.repeats} passes each (all passes: folder "
        f"{', '.join(f'{x:.0f}' for x in rates['folder'])}; shards {', '.join(f'{x:.0f}' for x in rates['shards'])} "
        "images/s).", "",
        "| reader | images/s | vs folder |", "|---|---|---|",
        f"| folder (`data.dataset=folder`) | {best['folder']:.0f} | 1.00x |",
        f"| shards (`data.dataset=webdataset`) | {best['shards']:.0f} | {best['shards'] / best['folder']:.2f}x |", ""]
    text = "\n".join(rows)
    print(text)
    if args.write:
        with open(args.write, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
