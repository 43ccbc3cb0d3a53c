"""Fuzz suite: broken dataset trees for every adapter, each either read right or a clear error.

Clean trees are written once in the real formats (``fixture_trees``, ``SyntheticFaces``) and copied per
case; each case then breaks its copy (missing, truncated and corrupt files, wrong sizes, out-of-set
labels, 16-bit and float images, 0/1 masks, NaN landmarks, empty folders...) and says what the right
outcome is: ``Ok(check)`` -- the adapter must return exactly what the case knows is on disk -- or
``Err(file)`` -- a :class:`~faceparse.errors.FaceParseError` whose message names ``file``.

Every case is also run through ``check_dataset`` (``faceparse datasets check``), which must never
raise, must list each ``Err`` case naming the file, and must list nothing for an ``Ok`` case.

Run with ``pytest -s`` to see the tally: cases tried, clear errors, read correctly, silently wrong
(must be 0), raw tracebacks (must be 0).
"""

from __future__ import annotations

import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import fixture_trees as fx
import numpy as np
import pytest

from faceparse.data.check import check_dataset
from faceparse.errors import FaceParseError
from faceparse.registry import DATASETS

S = 48  # face size of the LaPa / Helen / COFW trees
SP = 40  # Part Labels
NC = 3  # CelebAMask-HQ faces (ids 0, 1 in train, 2 in test)


# ----------------------------------------------------------------------------- outcomes
@dataclass
class Ok:
    check: Callable[[list[dict]], None]  # raises AssertionError when the samples are wrong


@dataclass
class Err:
    file: str  # a substring the error must contain: the offending file (or folder) name
    also: str = ""  # another substring the error must contain (e.g. the index of a bad point)


@dataclass
class Case:
    id: str
    template: str
    dataset: str
    split: str
    mutate: Callable[[Path, dict], Ok | Err]
    kwargs: dict | None = None


# ----------------------------------------------------------------------------- file breakers
def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])


def garbage(path: Path, n: int = 300) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())


def png_bytes(arr: np.ndarray) -> bytes:
    """PNG bytes of an RGB (converted to BGR for OpenCV) or grey array, any dtype OpenCV writes."""
    if arr.ndim == 3:
        a = arr[..., [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[..., ::-1]  # RGB(A) -> BGR(A)
    else:
        a = arr
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a))
    assert ok
    return buf.tobytes()


def write_png16(path: Path, rgb8: np.ndarray) -> None:
    """The same picture as 16 bits per channel (v * 257), stored under the original name."""
    path.write_bytes(png_bytes(rgb8.astype(np.uint16) * 257))


def write_float_tiff(path: Path, gray8: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(gray8.astype(np.float32) / 255.0, mode="F").save(path, format="TIFF")


def write_gray_png(path: Path, arr: np.ndarray) -> None:
    path.write_bytes(png_bytes(arr))


def gray_of(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


# ----------------------------------------------------------------------------- checks
def close(a: np.ndarray, b: np.ndarray, tol: float, what: str) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    err = np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() if a.size else 0.0
    assert err <= tol, f"{what}: mean abs difference {err:.2f} > {tol}"


def same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert np.array_equal(np.asarray(a), np.asarray(b)), f"{what}: differs"


JPEG_TOL = 6.0


# ----------------------------------------------------------------------------- LaPa
def lapa_paths(base: Path, info: dict, k: int = 0) -> tuple[str, Path, Path, Path]:
    name = info["names"]["train"][k]
    d = base / "LaPa" / "train"
    return name, d / "images" / f"{name}.jpg", d / "labels" / f"{name}.png", d / "landmarks" / f"{name}.txt"


def lapa_ok(info: dict, image: Callable[[np.ndarray], np.ndarray] | None = None, tol: float = JPEG_TOL) -> Ok:
    """All LaPa train faces read right; ``image`` maps the first face's drawn image to what is on disk now."""

    def check(raws: list[dict]) -> None:
        names = info["names"]["train"]
        assert [r["meta"]["name"] for r in raws] == names
        for k, (r, name) in enumerate(zip(raws, names)):
            face = info["faces"][name]
            same(r["mask"], face["mask"], f"{name} mask")
            np.testing.assert_allclose(r["landmarks"], info["landmarks"][name], atol=2e-3)
            want, t = (image(face["image"]), 0.0) if (k == 0 and image) else (face["image"], JPEG_TOL)
            close(r["image"], want, t if (k == 0 and image) else JPEG_TOL, f"{name} image")
            assert r["image"].dtype == np.uint8 and r["image"].shape[2] == 3

    return Ok(check)


def _lapa_cases() -> list[Case]:
    cases: list[Case] = []

    def add(id_, mutate, kwargs=None):
        cases.append(Case(f"lapa/{id_}", "lapa", "lapa", "train", mutate, kwargs))

    add("intact", lambda b, i: lapa_ok(i))

    def m(b, i):
        _, img, _, _ = lapa_paths(b, i)
        img.unlink()
        return Err(img.name)

    add("missing_image", m)

    def m(b, i):
        _, _, lbl, _ = lapa_paths(b, i)
        lbl.unlink()
        return Err(lbl.name)

    add("missing_label", m)

    def m(b, i):
        _, _, _, lmk = lapa_paths(b, i)
        lmk.unlink()
        return Err(lmk.name)

    add("missing_landmarks", m)
    for what, idx in (("image", 1), ("label", 2)):
        for how in ("truncated", "garbage", "zero_bytes", "header_only"):

            def m(b, i, idx=idx, how=how):
                p = lapa_paths(b, i)[idx]
                if how == "truncated":
                    truncate(p)
                elif how == "garbage":
                    garbage(p)
                elif how == "zero_bytes":
                    p.write_bytes(b"")
                else:
                    truncate(p, 0.05)
                return Err(p.name)

            add(f"{how}_{what}", m)

    def m(b, i):
        name, _, lbl, _ = lapa_paths(b, i)
        write_gray_png(lbl, cv2.resize(i["faces"][name]["mask"], (S + 4, S), interpolation=cv2.INTER_NEAREST))
        return Err(lbl.name)

    add("label_wrong_size", m)

    def m(b, i):
        name, img, _, _ = lapa_paths(b, i)
        cv2.imwrite(str(img), np.zeros((S // 2, S // 2, 3), np.uint8))
        return Err(name + ".png")  # the label map does not match its (now smaller) image

    add("image_wrong_size", m)
    for value in (11, 12, 254, 200):

        def m(b, i, value=value):
            name, _, lbl, _ = lapa_paths(b, i)
            mask = i["faces"][name]["mask"].copy()
            mask[:3, :3] = value
            write_gray_png(lbl, mask)
            return Err(lbl.name, str(value))

        add(f"label_value_{value}", m)

    def m(b, i):
        name, _, lbl, _ = lapa_paths(b, i)
        write_gray_png(lbl, np.zeros((S, S), np.uint8))
        return Err(lbl.name)

    add("label_all_zero", m)

    def m(b, i):
        name, _, lbl, _ = lapa_paths(b, i)
        mask = i["faces"][name]["mask"]
        lbl.write_bytes(png_bytes(np.dstack([mask, mask, (mask + 1) % 11]).astype(np.uint8)))
        return Err(lbl.name)

    add("label_colour", m)

    def m(b, i):
        name, _, lbl, _ = lapa_paths(b, i)
        write_gray_png(lbl, i["faces"][name]["mask"].astype(np.uint16))  # 16-bit PNG, same values
        return lapa_ok(i)

    add("label_16bit_same_values", m)

    def m(b, i):
        name, img, _, _ = lapa_paths(b, i)
        write_png16(img, i["faces"][name]["image"])
        return lapa_ok(i, image=lambda x: x)

    add("image_16bit_rgb", m)

    def m(b, i):
        name, img, _, _ = lapa_paths(b, i)
        img.write_bytes(png_bytes(gray_of(i["faces"][name]["image"]).astype(np.uint16) * 257))
        return lapa_ok(i, image=lambda x: np.repeat(gray_of(x)[..., None], 3, 2))

    add("image_16bit_gray", m)

    def m(b, i):
        name, img, _, _ = lapa_paths(b, i)
        write_float_tiff(img, gray_of(i["faces"][name]["image"]))
        return lapa_ok(i, image=lambda x: np.repeat(gray_of(x)[..., None], 3, 2))

    add("image_float_tiff", m)

    def m(b, i):
        name, img, _, _ = lapa_paths(b, i)
        write_gray_png(img, gray_of(i["faces"][name]["image"]))
        return lapa_ok(i, image=lambda x: np.repeat(gray_of(x)[..., None], 3, 2))

    add("image_gray8", m)

    def m(b, i):
        name, img, _, _ = lapa_paths(b, i)
        rgb = i["faces"][name]["image"]
        img.write_bytes(png_bytes(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])))
        return lapa_ok(i, image=lambda x: x)

    add("image_rgba", m)

    def m(b, i):
        from PIL import Image

        name, img, _, _ = lapa_paths(b, i)
        pal = Image.fromarray(i["faces"][name]["image"]).convert("P", palette=Image.Palette.ADAPTIVE)
        pal.save(img, format="PNG")
        truth = np.asarray(pal.convert("RGB"))
        return lapa_ok(i, image=lambda x: truth)

    add("image_palette", m)

    def m(b, i):
        from PIL import Image

        name, img, _, _ = lapa_paths(b, i)
        pil = Image.fromarray(i["faces"][name]["image"])
        exif = pil.getexif()
        exif[0x0112] = 6  # "rotate 90": the adapter keeps the stored pixel order, like its label map
        pil.save(img, format="PNG", exif=exif)
        return lapa_ok(i, image=lambda x: x)

    add("image_exif_rotated", m)
    for bad, label in (("nan", "nan"), ("inf", "inf"), ("-inf", "neg_inf")):
        for point in (0, 57, 105):

            def m(b, i, bad=bad, point=point):
                name, _, _, lmk = lapa_paths(b, i)
                lines = lmk.read_text().splitlines()
                lines[1 + point] = f"{bad} 3.0"
                lmk.write_text("\n".join(lines) + "\n")
                return Err(lmk.name, f"index {point}")

            add(f"landmarks_{label}_point{point}", m)
    for id_, text in (
        ("landmarks_105_points", lambda t: "\n".join(t.splitlines()[:-1])),
        ("landmarks_wrong_header", lambda t: "\n".join(["98"] + t.splitlines()[1:])),
        ("landmarks_text", lambda t: "106\nleft eye here\n"),
        ("landmarks_empty", lambda t: ""),
        (
            "landmarks_one_column",
            lambda t: "\n".join([t.splitlines()[0]] + [ln.split()[0] for ln in t.splitlines()[1:]]),
        ),
    ):

        def m(b, i, text=text):
            _, _, _, lmk = lapa_paths(b, i)
            lmk.write_text(text(lmk.read_text()))
            return Err(lmk.name)

        add(id_, m)

    def m(b, i):
        d = b / "LaPa" / "train" / "images"
        shutil.rmtree(d)
        d.mkdir()
        return Err(str(Path("train") / "images"))

    add("empty_images_folder", m)

    def m(b, i):
        shutil.rmtree(b / "LaPa" / "train" / "landmarks")
        return Err("landmarks")

    add("missing_landmarks_folder", m)

    def m(b, i):
        shutil.rmtree(b / "LaPa" / "train")
        return Err(str(Path("LaPa") / "train"))

    add("missing_split_folder", m)
    return cases


# ----------------------------------------------------------------------------- Helen (Smith layout)
def smith_paths(base: Path, info: dict, k: int = 0) -> tuple[str, Path, Path]:
    name = info["names"]["train"][k]
    d = base / "SmithCVPR2013_dataset_resized"
    return name, d / "images" / f"{name}.jpg", d / "labels" / name


def smith_ok(info: dict, image: Callable[[np.ndarray], np.ndarray] | None = None) -> Ok:
    def check(raws: list[dict]) -> None:
        names = info["names"]["train"]
        assert [r["meta"]["name"] for r in raws] == names
        for k, (r, name) in enumerate(zip(raws, names)):
            face = info["faces"][name]
            same(r["mask"], face["mask"], f"{name} mask")
            if k == 0 and image:
                close(r["image"], image(face["image"]), 0.0, f"{name} image")
            else:
                close(r["image"], face["image"], JPEG_TOL, f"{name} image")

    return Ok(check)


def _smith_cases() -> list[Case]:
    cases: list[Case] = []

    def add(id_, mutate):
        cases.append(Case(f"helen_smith/{id_}", "helen_smith", "helen", "train", mutate))

    add("intact", lambda b, i: smith_ok(i))

    def m(b, i):
        name, _, lbl = smith_paths(b, i)
        for c in range(11):
            write_gray_png(lbl / f"{name}_lbl{c:02d}.png", np.zeros((S, S), np.uint8))
        return Err(name)

    add("all_class_maps_zero", m)

    def m(b, i):
        name, _, lbl = smith_paths(b, i)
        for c in range(1, 11):
            write_gray_png(lbl / f"{name}_lbl{c:02d}.png", np.zeros((S, S), np.uint8))
        return Err(name)

    add("face_class_maps_zero", m)
    for c in (0, 5, 10):

        def m(b, i, c=c):
            name, _, lbl = smith_paths(b, i)
            (lbl / f"{name}_lbl{c:02d}.png").unlink()
            return Err(f"{name}_lbl{c:02d}.png")

        add(f"missing_map_{c:02d}", m)
    for how in ("truncated", "garbage"):

        def m(b, i, how=how):
            name, _, lbl = smith_paths(b, i)
            p = lbl / f"{name}_lbl03.png"
            truncate(p) if how == "truncated" else garbage(p)
            return Err(p.name)

        add(f"{how}_class_map", m)

    def m(b, i):
        name, _, lbl = smith_paths(b, i)
        p = lbl / f"{name}_lbl04.png"
        write_gray_png(p, np.zeros((S, S + 2), np.uint8))
        return Err(p.name)

    add("class_map_wrong_size", m)

    def m(b, i):
        name, _, lbl = smith_paths(b, i)
        p = lbl / f"{name}_lbl06.png"
        p.write_bytes(
            png_bytes(np.dstack([np.zeros((S, S), np.uint8), np.full((S, S), 9, np.uint8), np.zeros((S, S), np.uint8)]))
        )
        return Err(p.name)

    add("class_map_colour", m)

    def m(b, i):
        for name in i["names"]["train"]:
            lbl = b / "SmithCVPR2013_dataset_resized" / "labels" / name
            for c in range(11):
                soft = np.where(i["faces"][name]["mask"] == c, 60000, 300).astype(np.uint16)
                write_gray_png(lbl / f"{name}_lbl{c:02d}.png", soft)
        return smith_ok(i)

    add("class_maps_16bit", m)

    def m(b, i):
        for name in i["names"]["train"]:
            lbl = b / "SmithCVPR2013_dataset_resized" / "labels" / name
            for c in range(11):
                write_gray_png(lbl / f"{name}_lbl{c:02d}.png", (i["faces"][name]["mask"] == c).astype(np.uint8))
        return smith_ok(i)

    add("class_maps_binary_0_1", m)

    def m(b, i):
        _, img, _ = smith_paths(b, i)
        img.unlink()
        return Err(img.name)

    add("missing_image", m)
    for how in ("truncated", "garbage"):

        def m(b, i, how=how):
            _, img, _ = smith_paths(b, i)
            truncate(img) if how == "truncated" else garbage(img)
            return Err(img.name)

        add(f"{how}_image", m)

    def m(b, i):
        name, img, _ = smith_paths(b, i)
        write_png16(img, i["faces"][name]["image"])
        return smith_ok(i, image=lambda x: x)

    add("image_16bit", m)

    def m(b, i):
        p = b / "SmithCVPR2013_dataset_resized" / "exemplars.txt"
        p.write_text(p.read_text() + "3 , 9999999_1\n")
        return Err("9999999_1")

    add("split_lists_unknown_face", m)

    def m(b, i):
        p = b / "SmithCVPR2013_dataset_resized" / "exemplars.txt"
        p.write_text(p.read_text() + "just one field\n")
        return Err("exemplars.txt")

    add("split_malformed_line", m)

    def m(b, i):
        (b / "SmithCVPR2013_dataset_resized" / "exemplars.txt").unlink()
        return Err("exemplars.txt")

    add("missing_split_file", m)

    def m(b, i):
        name, _, lbl = smith_paths(b, i)
        shutil.rmtree(lbl)
        lbl.mkdir()
        return Err(name)

    add("empty_label_folder", m)
    return cases


# ----------------------------------------------------------------------------- Helen (HELEN* layout)
def star_paths(base: Path, info: dict, k: int = 0, split: str = "train") -> tuple[str, Path, Path]:
    name = info["names"][split][k]
    d = base / "helen" / split
    return name, d / f"{name}_image.jpg", d / f"{name}_label.png"


def star_ok(info: dict, image: Callable[[np.ndarray], np.ndarray] | None = None) -> Ok:
    def check(raws: list[dict]) -> None:
        names = sorted(info["names"]["train"])
        assert [r["meta"]["name"] for r in raws] == names
        for r, name in zip(raws, names):
            face = info["faces"][name]
            same(r["mask"], face["mask"], f"{name} mask")
            np.testing.assert_allclose(r["landmarks"], info["landmarks"][name], atol=0.01)
            first = name == info["names"]["train"][0]
            close(r["image"], image(face["image"]) if (first and image) else face["image"],
                  0.0 if (first and image) else JPEG_TOL, f"{name} image")  # fmt: skip

    return Ok(check)


def _edit_landmark_line(base: Path, name: str, edit: Callable[[list[str]], list[str] | None]) -> Path:
    p = base / "helen" / "landmarks.txt"
    out = []
    for line in p.read_text().splitlines():
        fields = line.split()
        if fields and fields[-1] == name:
            new = edit(fields)
            if new is None:
                continue
            line = " ".join(new)
        out.append(line)
    p.write_text("\n".join(out) + "\n")
    return p


def _star_cases() -> list[Case]:
    cases: list[Case] = []

    def add(id_, mutate, split="train"):
        cases.append(Case(f"helen_star/{id_}", "helen_star", "helen", split, mutate))

    add("intact", lambda b, i: star_ok(i))
    for bad in ("nan", "inf", "-inf", "NaN"):

        def m(b, i, bad=bad):
            name = i["names"]["train"][0]
            p = _edit_landmark_line(b, name, lambda f: [*f[:10], bad, *f[11:]])  # value 10 = x of point 5
            return Err(p.name, "index 5")

        add(f"landmarks_{bad}", m)

    def m(b, i):
        test_name = i["names"]["test"][0]
        _edit_landmark_line(b, test_name, lambda f: ["nan", *f[1:]])
        return star_ok(i)  # a bad test face does not touch the train split

    add("nan_landmarks_of_other_split", m)

    def m(b, i):
        p = _edit_landmark_line(b, i["names"]["train"][0], lambda f: f[:100] + f[-1:])
        return Err(p.name)

    add("landmarks_short_line", m)

    def m(b, i):
        _edit_landmark_line(b, i["names"]["train"][1], lambda f: None)
        return Err(i["names"]["train"][1])

    add("landmarks_line_missing", m)

    def m(b, i):
        (b / "helen" / "landmarks.txt").unlink()
        return Err("landmarks.txt")

    add("missing_landmark_file", m)
    for value in (11, 100):

        def m(b, i, value=value):
            name, _, lbl = star_paths(b, i)
            mask = i["faces"][name]["mask"].copy()
            mask[-2:, -2:] = value
            write_gray_png(lbl, mask)
            return Err(lbl.name, str(value))

        add(f"label_value_{value}", m)

    def m(b, i):
        name, _, lbl = star_paths(b, i)
        write_gray_png(lbl, np.zeros((S, S), np.uint8))
        return Err(lbl.name)

    add("label_all_zero", m)

    def m(b, i):
        name, _, lbl = star_paths(b, i)
        write_gray_png(lbl, np.zeros((S + 6, S), np.uint8) + 1)
        return Err(lbl.name)

    add("label_wrong_size", m)

    def m(b, i):
        name, _, lbl = star_paths(b, i)
        lbl.unlink()
        return Err(lbl.name)

    add("missing_label", m)
    for how in ("truncated", "garbage"):

        def m(b, i, how=how):
            _, img, _ = star_paths(b, i)
            truncate(img) if how == "truncated" else garbage(img)
            return Err(img.name)

        add(f"{how}_image", m)

        def m(b, i, how=how):
            _, _, lbl = star_paths(b, i)
            truncate(lbl) if how == "truncated" else garbage(lbl)
            return Err(lbl.name)

        add(f"{how}_label", m)

    def m(b, i):
        name, img, _ = star_paths(b, i)
        write_png16(img, i["faces"][name]["image"])
        return star_ok(i, image=lambda x: x)

    add("image_16bit", m)

    def m(b, i):
        d = b / "helen" / "train"
        shutil.rmtree(d)
        d.mkdir()
        return Err(str(Path("helen") / "train"))

    add("empty_train_folder", m)
    return cases


# ----------------------------------------------------------------------------- COFW
COFW_KEYS = {"train": ("IsTr", "phisTr", "bboxesTr", "COFW_train_color.mat"), "test": ("IsT", "phisT", "bboxesT", "COFW_test_color.mat")}  # fmt: skip


def write_mat(path: Path, version: str, keys: tuple[str, str, str], images, phis, boxes) -> None:
    if version == "7.3":
        fx._write_mat73(path, *keys, images, phis, boxes)
    else:
        import scipy.io

        cell = np.empty((len(images), 1), dtype=object)
        for k, img in enumerate(images):
            cell[k, 0] = img
        scipy.io.savemat(str(path), {keys[0]: cell, keys[1]: phis, keys[2]: boxes}, format="5")


def cofw_ok(info: dict, split: str = "test", image: Callable[[np.ndarray], np.ndarray] | None = None,
            masks: bool = True) -> Ok:  # fmt: skip
    def check(raws: list[dict]) -> None:
        d = info[split]
        assert len(raws) == len(d["images"])
        for k, r in enumerate(raws):
            img = np.asarray(d["images"][k])
            want = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img
            close(r["image"], image(want) if image else want, 0.0 if not image else 1.0, f"{split} face {k} image")
            np.testing.assert_allclose(
                r["landmarks"], np.stack([d["phis"][k, :29], d["phis"][k, 29:58]], 1) - 1, atol=1e-4
            )
            same(r["landmark_occluded"], d["phis"][k, 58:] > 0, "occlusion flags")
            if split == "test" and masks:
                same(r["mask"], (d["masks"][k] > 0).astype(np.uint8), f"face {k} mask")
            else:
                assert (np.asarray(r["mask"]) == 255).all()

    return Ok(check)


def _cofw_cases(version: str) -> list[Case]:
    cases: list[Case] = []
    tpl = f"cofw{version.replace('.', '')}"

    def add(id_, mutate, split="test", kwargs=None):
        cases.append(Case(f"cofw_v{version}/{id_}", tpl, "cofw", split, mutate, kwargs))

    add("intact_test", lambda b, i: cofw_ok(i, "test"))
    add("intact_train", lambda b, i: cofw_ok(i, "train"), split="train")

    def rewrite(b, i, split, images=None, phis=None, boxes=None):
        *keys, fname = COFW_KEYS[split]
        d = i[split]
        write_mat(b / fname, version, tuple(keys), d["images"] if images is None else images,
                  d["phis"] if phis is None else phis, d["boxes"] if boxes is None else boxes)  # fmt: skip
        return b / fname

    for split in ("test", "train"):

        def m(b, i, split=split):
            rewrite(b, i, split, images=[np.asarray(x).astype(np.uint16) * 257 for x in i[split]["images"]])
            return cofw_ok(i, split)  # read back exactly: uint16 scaled by 255/65535, not clipped

        add(f"images_uint16_{split}", m, split=split)

    def m(b, i):
        rewrite(b, i, "test", images=[np.asarray(x).astype(np.float64) / 255.0 for x in i["test"]["images"]])
        return cofw_ok(i, "test")

    add("images_float_0_1", m)

    def m(b, i):
        rewrite(b, i, "test", images=[np.asarray(x).astype(np.float32) for x in i["test"]["images"]])
        return cofw_ok(i, "test")

    add("images_float_0_255", m)

    def m(b, i):
        rewrite(
            b,
            i,
            "test",
            images=[np.dstack([x, x]) if np.asarray(x).ndim == 2 else x[..., :2] for x in i["test"]["images"]],
        )
        return Err(COFW_KEYS["test"][3])

    add("images_two_channels", m)

    def m(b, i):
        for k, mask in enumerate(i["test"]["masks"]):
            write_gray_png(b / "COFW_test_masks" / f"{k + 1}.png", (mask > 0).astype(np.uint8))
        return cofw_ok(i, "test")

    add("masks_0_1", m)

    def m(b, i):
        for k, mask in enumerate(i["test"]["masks"]):
            write_gray_png(b / "COFW_test_masks" / f"{k + 1}.png", mask.astype(np.uint16) * 257)
        return cofw_ok(i, "test")

    add("masks_16bit_0_65535", m)

    def m(b, i):
        p = b / "COFW_test_masks" / "2.png"
        soft = cv2.GaussianBlur(i["test"]["masks"][1], (5, 5), 2)
        write_gray_png(p, soft)
        return Err(str(Path("COFW_test_masks") / "2.png"))

    add("mask_soft_values", m)

    def m(b, i):
        p = b / "COFW_test_masks" / "1.png"
        write_gray_png(p, np.zeros((S, S), np.uint8))
        return Err(str(Path("COFW_test_masks") / "1.png"))

    add("mask_all_zero", m)

    def m(b, i):
        p = b / "COFW_test_masks" / "1.png"
        write_gray_png(p, np.full((S - 4, S), 255, np.uint8))
        return Err(str(Path("COFW_test_masks") / "1.png"))

    add("mask_wrong_size", m)

    def m(b, i):
        (b / "COFW_test_masks" / "2.png").unlink()
        return Err(str(Path("COFW_test_masks") / "2.png"))

    add("mask_missing", m)
    for how in ("truncated", "garbage"):

        def m(b, i, how=how):
            p = b / "COFW_test_masks" / "1.png"
            truncate(p) if how == "truncated" else garbage(p)
            return Err(str(Path("COFW_test_masks") / "1.png"))

        add(f"mask_{how}", m)

    def m(b, i):
        shutil.rmtree(b / "COFW_test_masks")
        return Err("COFW_test_masks")

    add("mask_folder_missing", m)
    for split in ("test", "train"):
        for col, bad in ((3, np.nan), (40, np.inf), (60, np.nan)):

            def m(b, i, split=split, col=col, bad=bad):
                phis = i[split]["phis"].copy()
                phis[1, col] = bad
                p = rewrite(b, i, split, phis=phis)
                return Err(p.name, "index 1")

            add(f"phis_{'nan' if np.isnan(bad) else 'inf'}_col{col}_{split}", m, split=split)

    def m(b, i):
        boxes = i["test"]["boxes"].copy()
        boxes[0, 2] = np.inf
        p = rewrite(b, i, "test", boxes=boxes)
        return Err(p.name, "index 0")

    add("box_inf", m)

    def m(b, i):
        p = rewrite(b, i, "test", phis=i["test"]["phis"][:, :86])
        return Err(p.name)

    add("phis_86_columns", m)

    def m(b, i):
        p = rewrite(b, i, "test", images=i["test"]["images"][:1])
        return Err(p.name)

    add("fewer_images_than_faces", m)
    for how in ("truncated", "truncated_tail", "garbage", "zero_bytes"):

        def m(b, i, how=how):
            p = b / COFW_KEYS["test"][3]
            if how == "truncated":
                truncate(p, 0.5)
            elif how == "truncated_tail":
                truncate(p, 0.97)
            elif how == "garbage":
                garbage(p, 4096)
            else:
                p.write_bytes(b"")
            return Err(p.name)

        add(f"mat_{how}", m)

    def m(b, i):
        (b / COFW_KEYS["test"][3]).unlink()
        return Err(COFW_KEYS["test"][3])

    add("mat_missing", m)

    def m(b, i):
        *_, fname = COFW_KEYS["test"]
        d = i["test"]
        write_mat(b / fname, version, ("IsT", "phisWRONG", "bboxesT"), d["images"], d["phis"], d["boxes"])
        return Err(fname, "phisT")

    add("mat_wrong_variable", m)
    return cases


# ----------------------------------------------------------------------------- Part Labels
def parts_paths(base: Path, info: dict, k: int = 0) -> tuple[str, Path, Path, Path]:
    stem = info["names"]["train"][k]
    person = stem.rsplit("_", 1)[0]
    return (
        stem,
        base / "lfw_funneled" / person / f"{stem}.jpg",
        base / "parts_lfw_funneled_gt_images" / f"{stem}.ppm",
        base / "parts_lfw_funneled_superpixels_mat" / person / f"{stem}.dat",
    )


def parts_ok(info: dict, image: Callable[[np.ndarray], np.ndarray] | None = None) -> Ok:
    def check(raws: list[dict]) -> None:
        names = info["names"]["train"]
        assert [r["meta"]["name"] for r in raws] == names
        for k, (r, stem) in enumerate(zip(raws, names)):
            face = info["faces"][stem]
            same(r["mask"], face["parts"], f"{stem} labels")
            same(r["superpixels"], face["superpixels"], f"{stem} superpixels")
            if k == 0 and image:
                close(r["image"], image(face["image"]), 0.0, f"{stem} image")
            else:
                close(r["image"], face["image"], JPEG_TOL, f"{stem} image")

    return Ok(check)


def _ppm16(path: Path, rgb8: np.ndarray) -> None:
    h, w = rgb8.shape[:2]
    data = (rgb8.astype(">u2") * 257).tobytes()
    path.write_bytes(f"P6\n{w} {h}\n65535\n".encode() + data)


def _parts_cases() -> list[Case]:
    cases: list[Case] = []

    def add(id_, mutate):
        cases.append(Case(f"part_labels/{id_}", "part_labels", "part_labels", "train", mutate))

    add("intact", lambda b, i: parts_ok(i))
    for idx, what in ((1, "image"), (2, "label"), (3, "superpixels")):

        def m(b, i, idx=idx):
            p = parts_paths(b, i)[idx]
            p.unlink()
            return Err(p.name)

        add(f"missing_{what}", m)
    for idx, what in ((1, "image"), (2, "label")):
        for how in ("truncated", "garbage"):

            def m(b, i, idx=idx, how=how):
                p = parts_paths(b, i)[idx]
                truncate(p) if how == "truncated" else garbage(p)
                return Err(p.name)

            add(f"{how}_{what}", m)

    def colour_case(colour):
        def m(b, i):
            stem, _, ppm, _ = parts_paths(b, i)
            rgb = np.zeros((SP, SP, 3), np.uint8)
            for c, col in fx.PART_COLOURS.items():
                rgb[i["faces"][stem]["parts"] == c] = col
            rgb[5:8, 5:8] = colour
            fx._write_rgb(ppm, rgb)
            return Err(ppm.name)

        return m

    add("label_unknown_colour_yellow", colour_case((255, 255, 0)))
    add("label_unknown_colour_grey", colour_case((128, 128, 128)))

    def m(b, i):
        stem, _, ppm, _ = parts_paths(b, i)
        rgb = np.zeros((SP, SP, 3), np.uint8)
        for c, col in fx.PART_COLOURS.items():
            rgb[i["faces"][stem]["parts"] == c] = np.clip(np.array(col) + np.array([-5, 5, 5]), 0, 255)
        fx._write_rgb(ppm, rgb)
        return parts_ok(i)

    add("label_colours_within_tolerance", m)

    def m(b, i):
        stem, _, ppm, _ = parts_paths(b, i)
        rgb = np.zeros((SP, SP, 3), np.uint8)
        for c, col in fx.PART_COLOURS.items():
            rgb[i["faces"][stem]["parts"] == c] = col
        _ppm16(ppm, rgb)
        return parts_ok(i)

    add("label_16bit_ppm", m)

    def m(b, i):
        stem, _, ppm, _ = parts_paths(b, i)
        fx._write_rgb(ppm, np.tile(np.array([0, 0, 255], np.uint8), (SP, SP, 1)))
        return Err(ppm.name)

    add("label_all_background", m)

    def m(b, i):
        stem, _, ppm, _ = parts_paths(b, i)
        fx._write_rgb(ppm, np.tile(np.array([0, 255, 0], np.uint8), (SP + 2, SP, 1)))
        return Err(ppm.name)

    add("label_wrong_size", m)

    def m(b, i):
        stem, _, _, sp = parts_paths(b, i)
        np.savetxt(sp, i["faces"][stem]["superpixels"][:-1], fmt="%d")
        return Err(sp.name)

    add("superpixels_wrong_count", m)

    def m(b, i):
        stem, _, _, sp = parts_paths(b, i)
        sp.write_text(sp.read_text().replace("0 ", "nan ", 1))
        return Err(sp.name)

    add("superpixels_nan", m)

    def m(b, i):
        stem, _, _, sp = parts_paths(b, i)
        sp.write_text("")
        return Err(sp.name)

    add("superpixels_empty", m)

    def m(b, i):
        stem, img, _, _ = parts_paths(b, i)
        write_png16(img, i["faces"][stem]["image"])
        return parts_ok(i, image=lambda x: x)

    add("image_16bit", m)

    def m(b, i):
        stem, img, _, _ = parts_paths(b, i)
        write_gray_png(img, gray_of(i["faces"][stem]["image"]))
        return parts_ok(i, image=lambda x: np.repeat(gray_of(x)[..., None], 3, 2))

    add("image_gray", m)

    def m(b, i):
        p = b / "parts_train.txt"
        p.write_text(p.read_text() + "Nobody_Here x\n")
        return Err("parts_train.txt")

    add("split_malformed_line", m)

    def m(b, i):
        p = b / "parts_train.txt"
        p.write_text(p.read_text() + "Nobody_Here 3\n")
        return Err("Nobody_Here_0003")

    add("split_unknown_face", m)

    def m(b, i):
        shutil.rmtree(b / "lfw_funneled")
        (b / "lfw_funneled").mkdir()
        return Err("lfw_funneled")

    add("empty_image_folder", m)
    return cases


# ----------------------------------------------------------------------------- CelebAMask-HQ
def celeb_ok(info: dict, image: Callable[[np.ndarray], np.ndarray] | None = None, tol: float = 12.0) -> Ok:
    def check(raws: list[dict]) -> None:
        assert [r["meta"]["id"] for r in raws] == [0, 1]
        for k, r in enumerate(raws):
            same(r["mask"], info["masks"][k], f"face {k} labels")
            want = image(info["images"][k]) if (k == 0 and image) else info["images"][k]
            close(r["image"], want, tol, f"face {k} image")

    return Ok(check)


def _celeb_cases() -> list[Case]:
    cases: list[Case] = []
    kw = {"progress": False}

    def add(id_, mutate, kwargs=kw):
        cases.append(Case(f"celebamask_hq/{id_}", "celeb", "celebamask_hq", "train", mutate, kwargs))

    root = "CelebAMask-HQ"
    add("intact", lambda b, i: celeb_ok(i))

    def m(b, i):
        p = b / root / "CelebA-HQ-img" / "1.jpg"
        p.unlink()
        return Err(p.name)

    add("missing_image", m)
    for how in ("truncated", "garbage"):

        def m(b, i, how=how):
            p = b / root / "CelebA-HQ-img" / "0.jpg"
            truncate(p) if how == "truncated" else garbage(p)
            return Err(str(Path("CelebA-HQ-img") / "0.jpg"))

        add(f"{how}_image", m)

    def m(b, i):
        for p in (b / root / "CelebAMask-HQ-mask-anno" / "0").glob("00001_*.png"):
            p.unlink()
        return Err("00001_<part>.png")

    add("no_part_files", m)

    def m(b, i):
        p = b / root / "CelebAMask-HQ-mask-anno" / "0" / "00000_skin.png"
        truncate(p)
        return Err(p.name)

    add("truncated_part", m)

    def m(b, i):
        p = b / root / "CelebAMask-HQ-mask-anno" / "0" / "00000_nose.png"
        write_gray_png(p, np.full((S // 2, S // 2), 255, np.uint8))
        return Err(p.name)

    add("part_wrong_size", m)

    def m(b, i):
        for p in (b / root / "CelebAMask-HQ-mask-anno" / "0").glob("00000_*.png"):
            write_gray_png(p, np.zeros((S, S), np.uint8))
        return Err("00000_")

    add("all_parts_zero", m)

    def m(b, i):
        for p in (b / root / "CelebAMask-HQ-mask-anno" / "0").glob("0000[01]_*.png"):
            arr = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            write_gray_png(p, (arr > 0).astype(np.uint8))
        return celeb_ok(i)

    add("parts_0_1", m)

    def m(b, i):
        p = b / root / "CelebA-HQ-img" / "0.jpg"
        big = cv2.resize(i["images"][0], (2 * S, 2 * S), interpolation=cv2.INTER_LINEAR)
        write_png16(p, big)
        return celeb_ok(i)

    add("image_16bit", m)

    def m(b, i):
        p = b / root / "CelebA-HQ-img" / "0.jpg"
        cv2.imwrite(str(p), np.zeros((2 * S, 3 * S, 3), np.uint8))
        return Err(str(Path("CelebA-HQ-img") / "0.jpg"))

    add("image_wrong_aspect", m)

    def m(b, i):
        (b / root / "CelebA-HQ-to-CelebA-mapping.txt").unlink()
        return Err("CelebA-HQ-to-CelebA-mapping.txt")

    add("missing_mapping", m)

    def m(b, i):
        p = b / root / "CelebA-HQ-to-CelebA-mapping.txt"
        p.write_text(p.read_text() + "7 notanumber x.jpg\n")
        return Err("CelebA-HQ-to-CelebA-mapping.txt")

    add("mapping_malformed", m)

    def m(b, i):
        shutil.rmtree(b / root / "CelebAMask-HQ-mask-anno")
        d = b / root / "mask"
        d.mkdir()
        from faceparse.labels import get_label_set

        lut = get_label_set("celebamask_hq").mapping_to(get_label_set("celebamask_hq_bisenet")).astype(np.uint8)
        for k in range(NC):
            write_gray_png(d / f"{k}.png", lut[i["masks"][k]])
        bad = lut[i["masks"][1]].copy()
        bad[:2, :2] = 42
        write_gray_png(d / "1.png", bad)
        return Err(str(Path("mask") / "1.png"), "42")

    add("merged_value_out_of_set", m, {**kw, "layout": "merged"})
    return cases


CASES = _lapa_cases() + _smith_cases() + _star_cases() + _cofw_cases("7.3") + _cofw_cases("5") + _parts_cases()
CASES += _celeb_cases()


# ----------------------------------------------------------------------------- the run
@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    from faceparse.data.synthetic import SyntheticFaces

    base = tmp_path_factory.mktemp("fuzz_templates")
    out: dict[str, tuple[Path, dict]] = {}
    out["lapa"] = (base / "lapa", fx.write_lapa(base / "lapa", {"train": 2}, size=S))
    out["helen_smith"] = (base / "smith", fx.write_helen_smith(base / "smith", {"train": 2}, size=S))
    out["helen_star"] = (base / "star", fx.write_helen_star(base / "star", {"train": 2, "test": 1}, size=S))
    out["cofw73"] = (base / "cofw73", fx.write_cofw(base / "cofw73", 2, 2, size=S, version="7.3"))
    out["cofw5"] = (base / "cofw5", fx.write_cofw(base / "cofw5", 2, 2, size=S, version="5"))
    out["part_labels"] = (base / "parts", fx.write_part_labels(base / "parts", {"train": 2}, size=SP))
    syn = SyntheticFaces(split="train", num_samples=NC, image_size=S, seed=3)
    syn.write_celebamask_hq(base / "celeb" / "CelebAMask-HQ", NC)
    raws = [syn.load_raw(k) for k in range(NC)]
    out["celeb"] = (base / "celeb", {"masks": [r["mask"] for r in raws], "images": [r["image"] for r in raws]})
    return out


def _adapter_root(case: Case, tree: Path) -> Path:
    return tree / "CelebAMask-HQ" if case.template == "celeb" else tree


def run_case(case: Case, tree: Path, info: dict) -> tuple[str, str]:
    """-> (outcome, detail): outcome one of clear_error, read_correctly, silently_wrong, raw_traceback,
    unclear_error (a FaceParseError that does not name the file), false_alarm (an error for a good tree),
    check_missed / check_crashed / check_false_alarm (``datasets check`` disagreeing)."""
    expect = case.mutate(tree, info)
    root = _adapter_root(case, tree)
    kwargs = dict(case.kwargs or {})
    outcome, detail = "", ""
    try:
        ds = DATASETS.get(case.dataset)(root=str(root), split=case.split, image_size=None, **kwargs)
        raws = [ds.load_raw(k) for k in range(len(ds))]
    except FaceParseError as exc:
        msg = str(exc)
        if isinstance(expect, Ok):
            return "false_alarm", msg
        if expect.file not in msg or expect.also not in msg:
            return "unclear_error", f"expected {expect.file!r} and {expect.also!r} in: {msg}"
        outcome = "clear_error"
    except Exception:
        return "raw_traceback", traceback.format_exc(limit=4)
    else:
        if isinstance(expect, Err):
            return "silently_wrong", f"no error, expected one naming {expect.file!r}"
        try:
            expect.check(raws)
            # and through the whole sample pipeline (transform + tensors) at the original size
            sample = ds[0]
            img = sample["image"].numpy()
            assert img.shape[1:] == raws[0]["image"].shape[:2], "sample image size differs from the raw one"
            assert np.isfinite(img).all(), "sample image has NaN/inf values"
            same(sample["mask"].numpy(), raws[0]["mask"], "sample mask")
        except AssertionError as exc:
            return "silently_wrong", str(exc)
        except Exception:
            return "raw_traceback", traceback.format_exc(limit=4)
        outcome = "read_correctly"
    # the same tree through `faceparse datasets check` (the library function behind it)
    try:
        reports = check_dataset(str(root), case.dataset, splits=[case.split], **kwargs)
    except Exception:
        return "check_crashed", traceback.format_exc(limit=4)
    problems = [p for r in reports for p in r.problems]
    if isinstance(expect, Ok) and problems:
        return "check_false_alarm", "; ".join(problems)
    if isinstance(expect, Err) and not any(expect.file in p for p in problems):
        return "check_missed", f"expected a problem naming {expect.file!r}, got {problems}"
    return outcome, detail


def test_fuzz_adapters(templates, tmp_path, capsys):
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"
    tally: dict[str, int] = {}
    failures: list[str] = []
    for n, case in enumerate(CASES):
        src, info = templates[case.template]
        tree = tmp_path / f"c{n}"
        shutil.copytree(src, tree, ignore=shutil.ignore_patterns(".faceparse_cache"))
        outcome, detail = run_case(case, tree, info)
        tally[outcome] = tally.get(outcome, 0) + 1
        if outcome not in ("clear_error", "read_correctly"):
            failures.append(f"{case.id}: {outcome}: {detail}")
        shutil.rmtree(tree, ignore_errors=True)
    with capsys.disabled():
        print(
            f"\nfuzz adapters: {len(CASES)} cases tried, {tally.get('clear_error', 0)} clear errors, "
            f"{tally.get('read_correctly', 0)} read correctly, {tally.get('silently_wrong', 0)} silently wrong, "
            f"{tally.get('raw_traceback', 0)} raw tracebacks; other: "
            + (
                ", ".join(
                    f"{k} {v}"
                    for k, v in sorted(tally.items())
                    if k not in ("clear_error", "read_correctly", "silently_wrong", "raw_traceback")
                )
                or "none"
            )  # fmt: skip
        )
    assert tally.get("silently_wrong", 0) == 0 and tally.get("raw_traceback", 0) == 0, "\n".join(failures)
    assert not failures, "\n".join(failures)
    assert tally.get("clear_error", 0) >= 60 and tally.get("read_correctly", 0) >= 25
