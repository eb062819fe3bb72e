"""A deterministic synthetic face generator: the embedded default for the demo and the tests.

These are drawn faces, not photographs. An identity is a parameter vector (face shape, skin tone, eye spacing and
size, iris colour, brows, nose, mouth, hair style and colour, glasses, beard); each image of an identity varies
pose (roll, yaw-like squeeze, scale, shift), lighting (direction, brightness, contrast), expression (smile, eye
opening), blur, noise and occlusion. Identities are recognisable across their images but close enough to one
another that verification is not trivial, which makes the set useful for exercising a face search end to end in
minutes on a CPU. Nothing here says anything about accuracy on real faces.

Everything is a pure function of (seed, identity, image index), so any image can be regenerated alone. Faces are
drawn with OpenCV at twice the output size and downsampled (anti-aliasing). The five landmarks (eyes, nose tip,
mouth corners) are returned with every image, in the output's pixel coordinates; in "aligned" mode they sit near
the ArcFace 112x112 template, in "photo" mode the face lies anywhere in a larger canvas, to exercise alignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facenas.data.faces.types import FaceSet

SUPERSAMPLE = 2
_IRIS = np.array([[70, 45, 30], [110, 75, 40], [60, 110, 160], [80, 130, 80], [50, 50, 50]], np.float64)
_HAIR = np.array([[25, 20, 18], [70, 45, 25], [140, 100, 50], [200, 170, 110], [120, 120, 120], [150, 60, 30]],
                 np.float64)


@dataclass(frozen=True)
class Identity:
    """The parameters that make a synthetic person (in 112-pixel face units)."""

    face_rx: float
    face_ry: float
    skin: tuple[float, float, float]
    eye_dx: float
    eye_dy: float
    eye_size: float
    iris: tuple[float, float, float]
    brow_height: float
    brow_tilt: float
    brow_thickness: float
    nose_length: float
    nose_width: float
    mouth_width: float
    mouth_y: float
    lip: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: int
    hairline: float
    glasses: bool
    beard: bool


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(keys)))


def make_identity(seed: int, identity: int) -> Identity:
    r = _rng(seed, identity, 0xFACE)
    hue, sat, val = r.uniform(8, 28), r.uniform(0.25, 0.6), r.uniform(0.45, 0.95)
    skin = cv2.cvtColor(np.uint8([[[hue, sat * 255, val * 255]]]), cv2.COLOR_HSV2RGB)[0, 0].astype(float)
    return Identity(
        face_rx=r.uniform(31, 41), face_ry=r.uniform(42, 53), skin=tuple(skin),
        eye_dx=r.uniform(15, 21), eye_dy=r.uniform(-3, 3), eye_size=r.uniform(3.5, 6.0),
        iris=tuple(_IRIS[r.integers(len(_IRIS))] + r.normal(0, 12, 3)),
        brow_height=r.uniform(6, 10), brow_tilt=r.uniform(-0.35, 0.35), brow_thickness=r.uniform(1.5, 3.5),
        nose_length=r.uniform(13, 22), nose_width=r.uniform(5, 10),
        mouth_width=r.uniform(16, 27), mouth_y=r.uniform(86, 95),
        lip=tuple(np.clip(skin * r.uniform(0.55, 0.8) + np.array([40, 0, 0]), 0, 255)),
        hair=tuple(_HAIR[r.integers(len(_HAIR))] + r.normal(0, 10, 3)), hair_style=int(r.integers(4)),
        hairline=r.uniform(14, 26), glasses=bool(r.random() < 0.2), beard=bool(r.random() < 0.2),
    )


def _pt(x: float, y: float) -> tuple[int, int]:
    s = SUPERSAMPLE * 16  # cv2 draws with 4 fractional bits
    return int(round(x * s)), int(round(y * s))


def _ax(a: float, b: float) -> tuple[int, int]:
    s = SUPERSAMPLE * 16
    return max(int(round(a * s)), 1), max(int(round(b * s)), 1)


def _color(c: tuple[float, ...] | np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _draw_face(ident: Identity, smile: float, eye_open: float, background: np.ndarray) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """Render the canonical (frontal, centred) face on a 112-unit canvas; returns (RGB image, landmarks)."""
    size = 112 * SUPERSAMPLE
    img = np.empty((size, size, 3), np.uint8)
    img[:] = _color(background)
    cx, cy = 56.0, 62.0
    aa, sh = cv2.LINE_AA, 4
    eye_y = 51.0 + ident.eye_dy
    # hair behind the head
    if ident.hair_style in (1, 3):
        cv2.ellipse(img, _pt(cx, cy - 2), _ax(ident.face_rx + 8, ident.face_ry + 10), 0, 0, 360,
                    _color(ident.hair), -1, aa, sh)
    # neck and head
    cv2.rectangle(img, _pt(cx - 14, cy + 30), _pt(cx + 14, 112), _color(np.array(ident.skin) * 0.85), -1)
    cv2.ellipse(img, _pt(cx, cy), _ax(ident.face_rx, ident.face_ry), 0, 0, 360, _color(ident.skin), -1, aa, sh)
    if ident.beard:
        cv2.ellipse(img, _pt(cx, cy + 18), _ax(ident.face_rx * 0.8, ident.face_ry * 0.55), 0, 0, 180,
                    _color(np.array(ident.hair) * 0.9), -1, aa, sh)
    # hair on top
    if ident.hair_style != 2:
        top = cy - ident.face_ry
        cv2.ellipse(img, _pt(cx, top + ident.hairline), _ax(ident.face_rx + 1, ident.hairline + 4), 0, 180, 360,
                    _color(ident.hair), -1, aa, sh)
        if ident.hair_style == 3:  # fringe
            cv2.rectangle(img, _pt(cx - ident.face_rx * 0.7, top + 4), _pt(cx + ident.face_rx * 0.7,
                          top + ident.hairline + 6), _color(ident.hair), -1)
    # eyes, irises, lids
    eyes = [(cx - ident.eye_dx, eye_y), (cx + ident.eye_dx, eye_y)]
    open_h = ident.eye_size * 0.6 * max(eye_open, 0.15)
    for ex, ey in eyes:
        cv2.ellipse(img, _pt(ex, ey), _ax(ident.eye_size, open_h), 0, 0, 360, (245, 245, 245), -1, aa, sh)
        cv2.circle(img, _pt(ex, ey), int(round(min(ident.eye_size * 0.5, open_h) * SUPERSAMPLE * 16)),
                   _color(ident.iris), -1, aa, sh)
        cv2.circle(img, _pt(ex, ey), int(round(min(ident.eye_size * 0.2, open_h) * SUPERSAMPLE * 16)),
                   (15, 15, 15), -1, aa, sh)
    # brows
    for side, (ex, ey) in zip((-1, 1), eyes):
        by = ey - ident.brow_height
        tilt = ident.brow_tilt * side * 4
        cv2.line(img, _pt(ex - 7, by + tilt), _pt(ex + 7, by - tilt), _color(np.array(ident.hair) * 0.8),
                 max(int(ident.brow_thickness * SUPERSAMPLE), 1), aa)
    # nose
    tip = (cx, eye_y + ident.nose_length)
    nose = np.array([_pt(cx - 1, eye_y + 4), _pt(cx - ident.nose_width / 2, tip[1]), _pt(cx, tip[1] + 2),
                     _pt(cx + ident.nose_width / 2, tip[1])], np.int32)
    cv2.polylines(img, [nose], False, _color(np.array(ident.skin) * 0.65), 2 * SUPERSAMPLE, aa, sh)
    # mouth: an arc whose curvature is the expression
    half = ident.mouth_width / 2
    xs = np.linspace(-half, half, 24)
    ys = ident.mouth_y - smile * 5.0 * (1 - (xs / half) ** 2)
    lips = np.array([_pt(cx + x, y) for x, y in zip(xs, ys)], np.int32)
    cv2.polylines(img, [lips], False, _color(ident.lip), int(2.5 * SUPERSAMPLE), aa, sh)
    if ident.glasses:
        for ex, ey in eyes:
            cv2.circle(img, _pt(ex, ey), int(round((ident.eye_size + 4) * SUPERSAMPLE * 16)), (30, 30, 30),
                       SUPERSAMPLE, aa, sh)
        cv2.line(img, _pt(eyes[0][0] + ident.eye_size + 4, eye_y), _pt(eyes[1][0] - ident.eye_size - 4, eye_y),
                 (30, 30, 30), SUPERSAMPLE, aa)
    landmarks = np.array([eyes[0], eyes[1], tip, (cx - half, ident.mouth_y), (cx + half, ident.mouth_y)],
                         np.float64)
    return img, landmarks


def _light(img: np.ndarray, r: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    angle = r.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grad = ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle))
    gain = r.uniform(0.75, 1.2) * (1 + r.uniform(0.0, 0.6) * grad)
    contrast = r.uniform(0.8, 1.15)
    out = (img.astype(np.float32) - 128) * contrast + 128
    return np.clip(out * gain[..., None], 0, 255)


def render(seed: int, identity: int, index: int, *, size: int = 112, mode: str = "aligned",
           canvas: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """One image: (RGB uint8 array, 5x2 landmarks in its pixel coordinates)."""
    ident = make_identity(seed, identity)
    r = _rng(seed, identity, index + 1)
    smile, eye_open = r.uniform(-0.6, 1.0), r.uniform(0.35, 1.0)
    background = r.uniform(30, 220, 3)
    face, lmk = _draw_face(ident, smile, eye_open, background)
    # pose: roll, scale, a yaw-like horizontal squeeze, shift (in 112-unit coordinates)
    roll = np.deg2rad(r.normal(0, 6))
    scale = r.uniform(0.92, 1.08)
    squeeze = r.uniform(0.82, 1.0)
    if mode == "aligned":
        out_size, shift, place = size, r.normal(0, 2.5, 2), np.array([size / 2, size / 2 + 6 * size / 112])
        unit = size / 112
    elif mode == "photo":
        out_size = canvas
        unit = r.uniform(0.9, 1.3) * canvas / 250  # a face about 110 px tall in 250, like LFW's
        margin = 55 * unit
        place = np.array([r.uniform(margin, canvas - margin), r.uniform(margin, canvas - margin)])
        shift = np.zeros(2)
    else:
        raise ValueError(f"mode must be 'aligned' or 'photo', got {mode!r}")
    c, s = np.cos(roll) * scale * unit, np.sin(roll) * scale * unit
    linear = np.array([[c * squeeze, -s], [s * squeeze, c]])
    origin = np.array([56.0, 62.0])
    offset = place + shift - linear @ origin
    to_out = np.hstack([linear / SUPERSAMPLE, offset[:, None]])
    img = cv2.warpAffine(face, to_out, (out_size, out_size), flags=cv2.INTER_AREA,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=_color(background))
    lmk = lmk @ linear.T + offset
    img = _light(img, r)
    if r.random() < 0.15:  # occlusion: a band (sunglasses, scarf) or a patch
        eye_y = lmk[:2, 1].mean()
        if r.random() < 0.5:
            y0 = eye_y - 6 * unit if r.random() < 0.5 else lmk[3:, 1].mean() - 5 * unit
            cv2.rectangle(img, (int(lmk[0, 0] - 12 * unit), int(y0)), (int(lmk[1, 0] + 12 * unit),
                          int(y0 + 12 * unit)), _color(r.uniform(0, 80, 3)), -1)
        else:
            x0, y0 = lmk[r.integers(5)] + r.normal(0, 6, 2) * unit
            cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + r.uniform(10, 25) * unit),
                          int(y0 + r.uniform(10, 25) * unit)), _color(r.uniform(0, 255, 3)), -1)
    if r.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), r.uniform(0.3, 1.2))
    img = img + r.normal(0, r.uniform(0, 8), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), lmk


def synthetic_faces(identities: int, per_identity: int, *, seed: int = 0, size: int = 112, first_identity: int = 0,
                    mode: str = "aligned") -> FaceSet:
    """`identities` x `per_identity` images, labels 0..identities-1 (identity ids start at `first_identity`)."""
    images, landmarks, labels = [], [], []
    for label in range(identities):
        for index in range(per_identity):
            img, lmk = render(seed, first_identity + label, index, size=size, mode=mode)
            images.append(img)
            landmarks.append(lmk)
            labels.append(label)
    names = tuple(f"synthetic_{first_identity + i:05d}" for i in range(identities))
    return FaceSet(np.stack(images).transpose(0, 3, 1, 2).copy(), np.asarray(labels, np.int64), names,
                   np.stack(landmarks).astype(np.float32), name=f"synthetic(seed={seed})")
