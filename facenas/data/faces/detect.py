"""`facenas data landmarks`: five landmarks for every photo of an image folder, for ArcFace alignment.

insightface's datasets are aligned before training: a detector gives each photo's five landmarks and
`norm_crop` maps them onto the 112x112 template. This writes the landmarks file that facenas's readers take
(`faces.data.landmarks`, `facenas data build-rec --landmarks`, `build-bin --landmarks`): one line
`relative/path x1 y1 ... x5 y5` per photo where a face is found, the largest face of the photo. The service's own
detectors do the finding (MTCNN by default), so a model trained on these crops sees in training what the service's
photo path gives it.

Resumable: lines are appended and flushed as photos are done, and a second call skips the photos already in the
file, so a killed run loses at most one photo. Photos without a face, and unreadable ones, are listed in the report
and left out of the file (a folder source then centre-crops them, or training can leave them out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from facenas.data.faces.images import to_channels
from facenas.data.faces.sources import FolderSource, read_landmarks_file
from facenas.errors import DataError

# the largest face's (5, 2) landmarks in the photo's pixels, or None where there is no face
FindLandmarks = Callable[[np.ndarray], Optional[np.ndarray]]


@dataclass
class LandmarksReport:
    photos: int = 0
    already: int = 0  # in the file from an earlier call
    found: int = 0
    no_face: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        done = self.photos - len(self.unreadable)
        return {"photos": self.photos, "already_in_file": self.already, "found": self.found,
                "found_rate": (self.already + self.found) / done if done else 0.0,
                "no_face": self.no_face, "unreadable": self.unreadable}


def write_landmarks(root: str | Path, out: str | Path, find: FindLandmarks,
                    on_photo: Optional[Callable[[int, int], None]] = None) -> LandmarksReport:
    """Detect the five landmarks of every photo under `root` (one sub-folder per identity) and append them to
    `out`; photos already in `out` are skipped. `on_photo(done, total)` follows each photo."""
    source = FolderSource(root, skip_empty=True)
    out = Path(out)
    known = read_landmarks_file(out, source.root) if out.exists() else {}
    report = LandmarksReport(photos=len(source))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as sink:
        if not known:
            sink.write(f"# five landmarks (x y) per photo, relative to {source.root}: facenas data landmarks\n")
        for i in range(len(source)):
            rel = source.paths[i].relative_to(source.root).as_posix()
            if " " in rel:
                raise DataError(f"{source.paths[i]}: a path with spaces cannot go in a landmarks file; rename it")
            if rel in known:
                report.already += 1
            else:
                try:
                    rgb = to_channels(source.load(i), 3)
                except DataError:
                    report.unreadable.append(rel)
                else:
                    points = find(np.ascontiguousarray(rgb))
                    if points is None:
                        report.no_face.append(rel)
                    else:
                        values = " ".join(f"{v:.2f}" for v in np.asarray(points, np.float64).reshape(10))
                        sink.write(f"{rel} {values}\n")
                        sink.flush()
                        report.found += 1
            if on_photo is not None:
                on_photo(i + 1, len(source))
    return report
