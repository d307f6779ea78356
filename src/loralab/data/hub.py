"""Hub datasets read from their data files: a snapshot of the repository (the local Hugging Face cache, filled by a
download when the hub can be used), then the Parquet / CSV / JSON Lines files of each split.

``datasets.load_dataset`` is not used for the hub: offline it ignores the hub cache, it refuses loading-script
repositories (IWSLT 2017, HellaSwag: read through their ``refs/convert/parquet`` revision instead), and it cannot
count a split's rows without reading it. A file's split is its name before the first ``-`` or ``.``
(``train-00000-of-00001.parquet``, ``validation.csv``) or, for numbered files, its folder (``train/0000.parquet``,
the Parquet conversion's layout); files are read from the subset's folder (``config``) when the repository has one.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from loralab.models import hub_available, hub_state

DATA_SUFFIXES = (".parquet", ".csv", ".jsonl")


@dataclass(frozen=True)
class HubDataset:
    """A dataset repository on the hub: its id, the folder holding one subset's files, and a pinned revision."""

    repo: str
    config: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo + (f"/{self.config}" if self.config else "") + (f"@{self.revision}" if self.revision else "")


def _snapshot(ds: HubDataset, download: bool = True) -> Path:
    """The repository's local snapshot (only the subset's files are downloaded, and only with ``download`` and
    the hub available); FileNotFoundError when it is not there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = [f"{ds.config}/*"] if ds.config else [f"*{s}" for s in DATA_SUFFIXES]
    try:
        return Path(
            snapshot_download(
                ds.repo,
                repo_type="dataset",
                revision=ds.revision,
                allow_patterns=patterns,
                local_files_only=not (download and hub_available()),
            )
        )
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"hub dataset {ds}: {hub_state()}") from None


def split_of(path: Path) -> str:
    """``train-00000-of-00001.parquet`` -> train, ``validation.csv`` -> validation, ``test/0000.parquet`` -> test."""
    stem = path.name.split(".")[0].split("-")[0]
    return path.parent.name if stem.isdigit() else stem


def split_files(ds: HubDataset, splits: list[str], download: bool = True) -> dict[str, list[Path]]:
    """The data files of each wanted split (``download=False``: the local cache only); FileNotFoundError naming the
    splits the repository (or its cached copy) lacks and how to provide them."""
    root = _snapshot(ds, download)
    folder = root / ds.config if ds.config and (root / ds.config).is_dir() else root
    found: dict[str, list[Path]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.suffix in DATA_SUFFIXES and p.is_file()):
        found.setdefault(split_of(path), []).append(path)
    missing = [s for s in splits if s not in found]
    if missing:
        where = "the hub" if download and hub_available() else "the local Hugging Face cache"
        raise FileNotFoundError(
            f"hub dataset {ds}: split(s) {missing} not in {where} ({folder} has {sorted(found) or 'no data files'}); "
            "with the hub off, download the dataset into the cache first (huggingface-cli download --repo-type "
            f"dataset {ds.repo}{' --revision ' + ds.revision if ds.revision else ''}) or give a local copy"
        )
    return {s: found[s] for s in splits}


def read_rows(files: list[Path]) -> list[dict]:
    """The rows of a split's files, in file order (Parquet images stay ``{"bytes", "path"}`` dicts)."""
    rows: list[dict] = []
    for path in files:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows += pq.read_table(path).to_pylist()
        elif path.suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                rows += list(csv.DictReader(f))
        else:
            rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def count_rows(files: list[Path]) -> int:
    """The number of rows without reading the data (Parquet metadata; CSV records; non-blank JSON lines)."""
    total = 0
    for path in files:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
        elif path.suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                total += sum(1 for _ in csv.DictReader(f))
        else:
            total += sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return total
