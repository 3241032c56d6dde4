"""Reading Rakuten listings from disk, in every layout users have.

- challenge: ``X_train_update.csv`` (+ ``Y_train_CVw08PX.csv``) and
  ``images/image_train/image_{imageid}_product_{productid}.jpg``;
- flat (``shared/data/rakuten``): ``products.csv`` + ``images/`` (+ ``images_recovered/``);
- JSON lines: one object per line with the ``products.v1`` fields (``prdtypecode`` optional).

Rows without an image are normal. Labels are optional (test sets have none).
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rakuten_stream.hashing import sha256_of

CHALLENGE_X = ("X_train_update.csv", "X_test_update.csv", "X_train.csv", "X_test.csv")
CHALLENGE_Y = ("Y_train_CVw08PX.csv", "Y_train.csv")
IMAGE_FOLDERS = ("images", "images_recovered", "images/image_train", "images/image_test", "image_train", "image_test")

csv.field_size_limit(sys.maxsize)


class DatasetError(ValueError):
    """A data folder or file that cannot be read, with what is missing."""


@dataclass(frozen=True)
class ListingRecord:
    productid: int
    designation: str
    description: str | None = None
    imageid: int | None = None
    prdtypecode: int | None = None
    image_path: Path | None = None


@dataclass(frozen=True)
class Dataset:
    path: Path
    layout: str
    records: list[ListingRecord]
    files: list[Path]

    @property
    def with_images(self) -> int:
        return sum(r.image_path is not None for r in self.records)

    def content_hash(self) -> str:
        """sha256 over the input files (names and bytes): the dataset snapshot id."""
        digest = hashlib.sha256()
        for path in sorted(self.files):
            digest.update(path.name.encode())
            digest.update(sha256_of(path).encode())
        return digest.hexdigest()


def detect_layout(path: Path) -> str:
    if path.is_file():
        if path.suffix in (".jsonl", ".ndjson", ".json"):
            return "jsonl"
        if path.suffix == ".csv":
            return "csv"
        raise DatasetError(f"{path}: expected a folder, a .csv or a .jsonl file")
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or folder")
    if (path / "products.csv").is_file():
        return "flat"
    if any((path / name).is_file() for name in CHALLENGE_X):
        return "challenge"
    raise DatasetError(
        f"{path}: neither the flat layout (products.csv + images/) nor the challenge layout "
        f"({' or '.join(CHALLENGE_X)} + images/image_train/)"
    )


def load_dataset(path: Path | str, limit: int | None = None, with_recovered_images: bool = True) -> Dataset:
    """Read listings from a folder or file in any supported layout."""
    path = Path(path)
    layout = detect_layout(path)
    if layout == "jsonl":
        records = list(_read_jsonl(path))
        files = [path]
    elif layout == "csv":
        records = list(_read_csv(path, labels={}, image_index=_image_index(path.parent, True)))
        files = [path]
    elif layout == "flat":
        csv_path = path / "products.csv"
        index = _image_index(path, with_recovered_images)
        records = list(_read_csv(csv_path, labels={}, image_index=index))
        files = [csv_path] + sorted(set(index.values()))
    else:
        x_path = next(path / n for n in CHALLENGE_X if (path / n).is_file())
        y_path = next((path / n for n in CHALLENGE_Y if (path / n).is_file()), None)
        labels = _read_challenge_labels(y_path) if y_path else {}
        index = _image_index(path, with_recovered_images)
        records = list(_read_csv(x_path, labels=labels, image_index=index))
        files = [x_path] + ([y_path] if y_path else []) + sorted(set(index.values()))
    if limit is not None:
        records = records[:limit]
    return Dataset(path=path, layout=layout, records=records, files=files)


def _image_index(root: Path, with_recovered: bool) -> dict[tuple[int, int], Path]:
    """(imageid, productid) -> file, originals taking precedence over recovered copies."""
    index: dict[tuple[int, int], Path] = {}
    for folder in IMAGE_FOLDERS:
        if folder == "images_recovered" and not with_recovered:
            continue
        directory = root / folder
        if not directory.is_dir():
            continue
        for file in directory.glob("image_*_product_*.jpg"):
            parts = file.stem.split("_")
            try:
                key = (int(parts[1]), int(parts[3]))
            except (IndexError, ValueError):
                continue
            index.setdefault(key, file)
    return index


def _read_challenge_labels(path: Path) -> dict[str, int]:
    """Y file: ``,prdtypecode`` keyed by the X row index."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        return {row[0]: int(row[1]) for row in reader if len(row) >= 2}


def _read_csv(path: Path, labels: dict[str, int], image_index: dict[tuple[int, int], Path]) -> Iterator[ListingRecord]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or [])
        missing = {"productid", "designation"} - fields
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(sorted(missing))}; found {sorted(fields)}")
        index_column = "" if "" in fields else ("Unnamed: 0" if "Unnamed: 0" in fields else None)
        for line, row in enumerate(reader, start=2):
            try:
                productid = int(row["productid"])
                imageid = int(row["imageid"]) if row.get("imageid") else None
            except ValueError as exc:
                raise DatasetError(f"{path}:{line}: {exc}") from None
            label = row.get("prdtypecode")
            if label:
                prdtypecode: int | None = int(label)
            elif index_column is not None:
                prdtypecode = labels.get(row[index_column])
            else:
                prdtypecode = None
            yield ListingRecord(
                productid=productid,
                designation=row["designation"],
                description=row.get("description") or None,
                imageid=imageid,
                prdtypecode=prdtypecode,
                image_path=image_index.get((imageid, productid)) if imageid is not None else None,
            )


def _read_jsonl(path: Path) -> Iterator[ListingRecord]:
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                yield ListingRecord(
                    productid=int(row["productid"]),
                    designation=row["designation"],
                    description=row.get("description"),
                    imageid=int(row["imageid"]) if row.get("imageid") else None,
                    prdtypecode=int(row["prdtypecode"]) if row.get("prdtypecode") is not None else None,
                    image_path=Path(row["image_path"]) if row.get("image_path") else None,
                )
            except (KeyError, ValueError, TypeError) as exc:
                raise DatasetError(f"{path}:{line_no}: {type(exc).__name__}: {exc}") from None


def load_categories(data_dir: Path | None) -> dict[int, str]:
    """prdtypecode -> French category name (categories.json of the data folder, else the built-in table)."""
    if data_dir is not None:
        candidate = (data_dir if data_dir.is_dir() else data_dir.parent) / "categories.json"
        if candidate.is_file():
            raw = json.loads(candidate.read_text(encoding="utf-8"))
            return {int(code): (v["fr"] if isinstance(v, dict) else str(v)) for code, v in raw.items()}
    return dict(CATEGORY_NAMES)


# The community's French labels of the 27 codes (the challenge publishes none).
CATEGORY_NAMES: dict[int, str] = {
    10: "livres", 40: "jeux video pour pc et consoles", 50: "accesoires jeux video", 60: "consoles de jeux video",
    1140: "produits derives geeks et figurines", 1160: "cartes collectionables",
    1180: "figurines collectionables pour jeux de societe", 1280: "jouets, peluches, poupees",
    1281: "jeux de societe/cartes", 1300: "petites voitures (jouets) et maquettes",
    1301: "accesoires pour petits enfants/bebes et mobilier de jeu", 1302: "jeux d'exterieur",
    1320: "sacs pour femmes et accesoires petite enfance", 1560: "mobilier et produits decoration/rangement maison",
    1920: "linge de maison", 1940: "nourriture", 2060: "lampes et accesoires decoration pour maison",
    2220: "accesoires mascots/pets", 2280: "magazines", 2403: "livres et bds",
    2462: "consoles de jeux video et jeux videos", 2522: "produits de papeterie et rangement bureau",
    2582: "mobilier d'exterieur et accesoires", 2583: "accesoires de piscine",
    2585: "outillage et accesoires pour jardinage", 2705: "bds et livres", 2905: "jeu en telechargement",
}
