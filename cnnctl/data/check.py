"""Data hygiene of an image folder, before training: what ``cnnctl check DATA`` reports and ``cnnctl train --data``
sums up in one line.

Every file is decoded exactly as training decodes it (data/images.py: regular files only, the pixel limit, EXIF
orientation), so "unreadable" here means "left out of training". Duplicates are *pixel*-identical images (a
digest of the decoded, oriented pixels): the same pixels saved as PNG and as BMP are one image, a JPEG
re-compression (new pixels) is not.

Problems (``--strict`` fails on them): unreadable or truncated files, image-named entries that are not regular
files, symlinked folders leading out of the data folder, a class left without any readable image, the same image
twice in a class, the same image in two classes (its label is contradictory) and the same image in two splits
(leakage: the test score is not a test any more), and *near*-duplicates across splits: images whose 64-bit
perceptual hashes (data/images.py) differ in at most ``near_distance`` bits but whose pixels are not identical (a
re-compressed, resized or brightened copy of a training image in the test split). Notes (reported, never a
failure): mixed sizes, mixed colour modes, animated images (their first frame is used), class counts and the
imbalance ratio (largest class / smallest).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnctl.data.folder import Decoded, FileInfo, FolderScan

Log = Callable[[str], None]
SPLIT_ORDER = ("train", "val", "test")
_EXAMPLES = 5
# Near-duplicates: perceptual hashes at most NEAR_DISTANCE of 64 bits apart, confirmed by the correlation of
# their 16x16 grey thumbnails (at least NEAR_CORRELATION). Measured on real MNIST (benchmarks/sources.py): JPEG
# re-compressed (quality 75; 99.3% at 50), brightened (+20) and resized copies of training digits stay within 4
# bits and above 0.995; 1,108 pairs of distinct digits (of 5,000 x 1,000) came within 4 bits, none above 0.995.
NEAR_DISTANCE = 4
NEAR_CORRELATION = 0.995
_HASH_CHUNK = 4096


@dataclass
class FolderCheck:
    """Collects what decoding each split found (:meth:`add`), then reports it (:meth:`report`)."""

    scan: FolderScan
    files: dict[str, list[tuple[Path, int]]] = field(default_factory=dict)  # split → (path, class) as decoded
    infos: dict[str, list[FileInfo | None]] = field(default_factory=dict)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    near_distance: int = -1  # < 0: near-duplicates are not looked for (training's summary line)

    def add(self, split: str, items: list[tuple[Path, int]], decoded: Decoded) -> None:
        self.files[split] = list(items)
        self.infos[split] = list(decoded.infos)
        self.failures.extend(decoded.failures)

    def report(self) -> CheckReport:
        classes = self.scan.classes
        counts: dict[str, dict[str, int]] = {}
        readable: dict[str, dict[str, int]] = {}
        sizes: Counter[str] = Counter()
        modes: Counter[str] = Counter()
        animated: list[str] = []
        by_digest: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # digest → (split, class, path)
        for split in (s for s in SPLIT_ORDER if s in self.files):
            counts[split] = {name: 0 for name in classes}
            readable[split] = {name: 0 for name in classes}
            for (path, label), info in zip(self.files[split], self.infos[split]):
                names = [classes[i] for i in label] if isinstance(label, tuple) else [classes[label]]
                name = "|".join(names)
                for each in names:
                    counts[split][each] += 1
                if info is None:
                    continue
                for each in names:
                    readable[split][each] += 1
                sizes[f"{info.width}x{info.height}"] += 1
                modes[info.mode] += 1
                if info.animated:
                    animated.append(str(path))
                by_digest[info.digest].append((split, name, str(path)))
        within, across, leaks = [], [], []
        for group in by_digest.values():
            if len(group) < 2:
                continue
            entries = [{"split": split, "class": name, "path": path} for split, name, path in group]
            if len({split for split, _, _ in group}) > 1:
                leaks.append(entries)
            if len({name for _, name, _ in group}) > 1:
                across.append(entries)
            per_place = Counter((split, name) for split, name, _ in group)
            if any(count > 1 for count in per_place.values()):
                within.append(entries)
        train = readable.get("train", {})
        present = [n for n in train.values() if n]
        empty = [name for name in classes if counts.get("train", {}).get(name) and not train.get(name)]
        return CheckReport(
            root=str(self.scan.root), classes=list(classes), counts=counts, readable=readable,
            unreadable=[{"path": str(path), "reason": reason} for path, reason in self.failures],
            special=[str(p) for p in self.scan.special], outside_links=[str(p) for p in self.scan.outside_links],
            skipped=self.scan.skipped, sizes=dict(sizes.most_common()), modes=dict(modes.most_common()),
            animated=animated, duplicates_within_class=within, duplicates_across_classes=across,
            shared_between_splits=leaks, empty_classes=empty,
            imbalance_ratio=(max(present) / min(present)) if present else None,
            near_duplicates_across_splits=self.near_pairs(),
        )

    def near_pairs(self) -> list[dict[str, Any]]:
        """Pairs of images in different splits whose perceptual hashes differ in at most ``near_distance`` bits
        and whose pixels differ (identical ones are leakage already), closest first."""
        import torch

        if self.near_distance < 0:
            return []
        hashed: dict[str, list[tuple[str, str, int, bytes]]] = {}
        for split, infos in self.infos.items():
            hashed[split] = [(str(path), info.digest, info.phash, info.thumb or b"")
                             for (path, _), info in zip(self.files[split], infos)
                             if info is not None and info.phash is not None]
        bits = {split: torch.tensor([[(value >> position) & 1 for position in range(64)] for _, _, value, _ in entries],
                                    dtype=torch.float32).reshape(-1, 64) for split, entries in hashed.items()}
        pairs = []
        present = [split for split in SPLIT_ORDER if hashed.get(split)]
        for position, first in enumerate(present):
            for second in present[position + 1:]:
                a, b = bits[first], bits[second]
                for start in range(0, a.shape[0], _HASH_CHUNK):  # Hamming distances as a product of bit matrices
                    block = a[start:start + _HASH_CHUNK]
                    distance = block.sum(1, keepdim=True) + b.sum(1) - 2 * block @ b.T
                    for i, j in (distance <= self.near_distance).nonzero().tolist():
                        left, right = hashed[first][start + i], hashed[second][j]
                        correlation = _correlation(left[3], right[3])
                        if left[1] != right[1] and correlation >= NEAR_CORRELATION:
                            pairs.append({"distance": int(distance[i, j]), "correlation": round(correlation, 4),
                                          "split": first, "path": left[0], "other_split": second,
                                          "other_path": right[0]})
        return sorted(pairs, key=lambda pair: (pair["distance"], pair["path"], pair["other_path"]))


def _correlation(first: bytes, second: bytes) -> float:
    """Pearson correlation of two thumbnails (1: the same picture up to brightness and contrast)."""
    import torch

    if not first or len(first) != len(second):
        return 0.0
    a, b = (torch.frombuffer(bytearray(data), dtype=torch.uint8).double() for data in (first, second))
    a, b = a - a.mean(), b - b.mean()
    norm = float(a.norm() * b.norm())
    return float(a @ b) / norm if norm > 0 else float(torch.equal(a, b))


@dataclass
class CheckReport:
    root: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split → class → files found
    readable: dict[str, dict[str, int]]  # split → class → files that decoded
    unreadable: list[dict[str, str]]
    special: list[str]
    outside_links: list[str]
    skipped: int
    sizes: dict[str, int]
    modes: dict[str, int]
    animated: list[str]
    duplicates_within_class: list[list[dict[str, str]]]
    duplicates_across_classes: list[list[dict[str, str]]]
    shared_between_splits: list[list[dict[str, str]]]
    empty_classes: list[str]
    imbalance_ratio: float | None
    near_duplicates_across_splits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    def problems(self) -> dict[str, int]:
        """Problem name → how many (only those present)."""
        found = {
            "unreadable files": len(self.unreadable),
            "entries that are not regular files": len(self.special),
            "symlinked folders leading out of the data folder": len(self.outside_links),
            "classes without a readable training image": len(self.empty_classes),
            "images repeated within a class": len(self.duplicates_within_class),
            "images in more than one class": len(self.duplicates_across_classes),
            "images in more than one split (leakage)": len(self.shared_between_splits),
            "near-duplicate pairs across splits": len(self.near_duplicates_across_splits),
        }
        return {name: count for name, count in found.items() if count}

    def notes(self) -> list[str]:
        notes = []
        if len(self.sizes) > 1:
            notes.append(f"{len(self.sizes)} different image sizes (all are resized to one)")
        if len(self.modes) > 1:
            notes.append("mixed colour modes: " + ", ".join(f"{mode} {count:,}" for mode, count in self.modes.items()))
        if self.animated:
            notes.append(f"{len(self.animated)} animated image(s): their first frame is used")
        if self.imbalance_ratio is not None and self.imbalance_ratio >= 3:
            notes.append(f"classes are imbalanced {self.imbalance_ratio:.1f}:1 (consider --class-weights auto or "
                         "--sampler balanced)")
        return notes

    def summary_line(self) -> str:
        """The one line ``cnnctl train --data`` prints."""
        train = self.readable.get("train", {})
        present = [n for n in train.values() if n]
        span = f"{min(present):,}-{max(present):,} per class" if present else "no readable images"
        ratio = f", imbalance {self.imbalance_ratio:.1f}:1" if self.imbalance_ratio is not None else ""
        problems = self.problems()
        found = "; ".join(f"{count:,} {name}" for name, count in problems.items()) or "no problems found"
        return (f"data check: {self.total:,} files in {len(self.classes)} classes ({span} in train{ratio}); {found}"
                + (f" (`cnnctl check {self.root}` lists them)" if problems else ""))

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self), "total": self.total, "problems": self.problems(), "notes": self.notes()}
