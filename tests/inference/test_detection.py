"""faceparse.detection: the cascade default on a real photo (hand-marked face and eyes), RetinaFace
loading/priors/decoding/NMS with state dicts built here, YuNet through a tiny ONNX graph."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skimage_data

from faceparse.data.align import TEMPLATE_5, alignment_matrix, apply_affine
from faceparse.detection import Face, build_detector, landmarks_from_box, list_detectors
from faceparse.detection.cascade import CascadeDetector, find_eyes, opencv_cascade_path
from faceparse.detection.retinaface import (
    RetinaFaceNet,
    convert_retinaface_state_dict,
    decode_boxes,
    decode_landmarks,
    nms_inclusive,
    prior_boxes,
)
from faceparse.errors import FaceParseError, MissingWeightsError

# Hand marks on skimage.data.astronaut() (512 x 512): the photo was saved as PNG, cropped around the
# face, enlarged 5x and 8x with nearest-neighbour pixels and a 10-px / 5-px grid drawn on it, and
# looked at. Face box: left/right skin edge at cheek height, hairline at the forehead's centre, chin.
# Eye regions: the visible eye openings (corner to corner, upper to lower lid) plus ~1-2 px.
# Eye centres: the pupils. (x0, y0, x1, y1) and (x, y) in pixels.
HAND_FACE_BOX = (181.0, 79.0, 269.0, 178.0)
HAND_LEFT_EYE_REGION = (190.0, 95.0, 215.0, 108.0)  # image-left eye (the subject's right)
HAND_RIGHT_EYE_REGION = (234.0, 97.0, 260.0, 110.0)
HAND_EYE_CENTRES = np.array([[203.0, 100.5], [247.0, 102.5]])


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    return ix * iy / (area(a) + area(b) - ix * iy)


def inside(p, region) -> bool:
    return region[0] <= p[0] <= region[2] and region[1] <= p[1] <= region[3]


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def astronaut_faces(astronaut):
    det = build_detector()
    return det(astronaut), det.last_eye_sources


# ---------------------------------------------------------------------------- default (cascade) detector
def test_default_detector_one_face_matching_the_hand_marked_box(astronaut_faces):
    faces, sources = astronaut_faces
    assert len(faces) == 1
    face = faces[0]
    assert isinstance(face, Face) and face.score == 1.0
    assert iou(face.box, HAND_FACE_BOX) >= 0.5, face.box
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    assert face.landmarks_estimated  # nose and mouth are never measured by the cascade
    assert sources == ["dark-blob"]  # the eyes were measured, not taken from the box


def test_eye_landmarks_inside_the_hand_marked_eye_regions(astronaut_faces):
    lm = astronaut_faces[0][0].landmarks
    assert inside(lm[0], HAND_LEFT_EYE_REGION), lm[0]
    assert inside(lm[1], HAND_RIGHT_EYE_REGION), lm[1]
    assert np.abs(lm[:2] - HAND_EYE_CENTRES).max() < 3.0  # pixels; the pupils are ~6 px wide


def test_five_point_alignment_puts_the_hand_marked_eyes_on_the_template(astronaut_faces):
    size = 256
    m = alignment_matrix(astronaut_faces[0][0].landmarks, size)
    eyes = apply_affine(HAND_EYE_CENTRES, m)
    template_eyes = TEMPLATE_5[:2] * size - 0.5
    assert np.abs(eyes - template_eyes).max() <= 0.03 * size, eyes - template_eyes


def test_eye_positions_are_measured_not_taken_from_the_box(astronaut, astronaut_faces):
    """Shifting the box leaves the measured eyes where the eyes are (the box template would move)."""
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    box = astronaut_faces[0][0].box
    ref = find_eyes(gray, box)
    for dx, dy in ((-6, 0), (5, 4), (0, -5)):
        moved = (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)
        eyes = find_eyes(gray, moved)
        assert eyes is not None
        assert np.abs(eyes - ref).max() < 1.5, (dx, dy, eyes, ref)
        assert np.abs(landmarks_from_box(moved)[:2] - landmarks_from_box(box)[:2]).max() >= 4


def test_mirrored_photo_gives_mirrored_eyes_in_image_left_right_order(astronaut, astronaut_faces):
    det = build_detector("skimage")
    faces = det(np.ascontiguousarray(astronaut[:, ::-1]))
    assert len(faces) == 1
    lm = faces[0].landmarks
    ref = astronaut_faces[0][0].landmarks
    w = astronaut.shape[1]
    assert lm[0, 0] < lm[1, 0]  # image-left eye first
    np.testing.assert_allclose(lm[0], [w - 1 - ref[1, 0], ref[1, 1]], atol=2.0)
    np.testing.assert_allclose(lm[1], [w - 1 - ref[0, 0], ref[0, 1]], atol=2.0)


def test_no_eyes_found_falls_back_to_the_box_template():
    flat = np.full((100, 100), 128, np.uint8)
    assert find_eyes(flat, (10.0, 10.0, 90.0, 90.0)) is None
    lm = landmarks_from_box((10, 20, 110, 220))
    assert lm.dtype == np.float32 and lm.shape == (5, 2)
    assert lm[0, 0] < lm[2, 0] < lm[1, 0] and lm[0, 1] == lm[1, 1] < lm[2, 1] < lm[3, 1]
    assert np.all((lm >= [10, 20]) & (lm <= [110, 220]))


def test_no_face_in_a_photo_without_faces():
    assert build_detector()(skimage_data.coffee()) == []


def test_landmarks_off_gives_boxes_only(astronaut):
    faces = CascadeDetector(landmarks=False)(astronaut)
    assert len(faces) == 1 and faces[0].landmarks is None and not faces[0].landmarks_estimated


def test_opencv_eye_cascade_hits_are_used_when_present(astronaut, astronaut_faces):
    class FakeEyeCascade:  # OpenCV 5 wheels ship no cascades: stand in for haarcascade_eye.xml
        def detectMultiScale(self, roi, **kw):  # OpenCV's method name
            return np.array([[20, 20, 10, 10], [62, 24, 12, 10]])

    det = CascadeDetector()
    det._load()
    det._eye_impl = FakeEyeCascade()
    face = det(astronaut)[0]
    x0, y0 = int(round(face.box[0])), int(round(face.box[1]))
    np.testing.assert_allclose(face.landmarks[:2], [[x0 + 25, y0 + 25], [x0 + 68, y0 + 29]])
    assert det.last_eye_sources == ["eye-cascade"]


def test_registry_and_errors():
    assert set(list_detectors()) == {"auto", "skimage", "opencv", "retinaface", "yunet"}
    assert isinstance(build_detector("auto"), CascadeDetector)
    with pytest.raises(FaceParseError, match="unknown face detector 'nope'"):
        build_detector("nope")
    with pytest.raises(FaceParseError, match="takes no weights"):
        build_detector("skimage", weights="x.pth")
    with pytest.raises(FaceParseError, match="H x W x 3 uint8"):
        build_detector()(np.zeros((10, 10), np.uint8))
    if opencv_cascade_path() is None:
        with pytest.raises(FaceParseError, match="does not ship"):
            build_detector("opencv")
    with pytest.raises(FaceParseError, match=r"\(5, 2\)"):
        Face((0, 0, 1, 1), 1.0, np.zeros((4, 2)))


# ---------------------------------------------------------------------------- RetinaFace
# The distributed checkpoints' names (biubug6/Pytorch_Retinaface; facexlib uses the same), written
# here from their module layout: flat conv_dw Sequentials, fpn.output*/merge*, ssh*.conv*, *Head.
def distributed_name(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "body" and parts[1] == "body":  # ResNet-50 under IntermediateLayerGetter
        return ".".join(["body", *parts[2:]])
    if parts[0] == "body" and parts[2:4] != ["0", "0"] and parts[3] in ("dw", "pw"):
        flat = int(parts[4]) + (0 if parts[3] == "dw" else 3)
        return ".".join([*parts[:3], str(flat), *parts[5:]])
    if parts[0] == "fpn":
        name = {"lateral": "output", "smooth": "merge"}[parts[1]] + str(int(parts[2]) + 1)
        return ".".join(["fpn", name, *parts[3:]])
    if parts[0] == "context":
        branch = {"branch3": "conv3X3", "branch5a": "conv5X5_1", "branch5b": "conv5X5_2"}
        branch |= {"branch7a": "conv7X7_2", "branch7b": "conv7x7_3"}
        return ".".join([f"ssh{int(parts[1]) + 1}", branch[parts[2]], *parts[3:]])
    head = {"cls_head": "ClassHead", "box_head": "BboxHead", "landmark_head": "LandmarkHead"}
    if parts[0] in head:
        return ".".join([head[parts[0]], parts[1], "conv1x1", *parts[2:]])
    return key


@pytest.fixture(scope="module")
def mnet_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    net = RetinaFaceNet("mobilenet0.25").eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("retina") / "mobilenet0.25_Final.pth"
    torch.save({"module." + distributed_name(k): v for k, v in net.state_dict().items()}, path)
    return net, path


@pytest.fixture(scope="module")
def r50_shapes():
    with torch.device("meta"):  # key names and shapes only: no memory, no initialisation
        return RetinaFaceNet("resnet50").state_dict()


def test_distributed_key_names_convert_to_this_network(r50_shapes):
    # a few names as they appear in the distributed files, and the shapes they hold
    mnet = RetinaFaceNet("mobilenet0.25").state_dict()
    known = {
        "body.stage1.0.0.weight": (8, 3, 3, 3),
        "body.stage1.1.0.weight": (8, 1, 3, 3),
        "body.stage1.1.3.weight": (16, 8, 1, 1),
        "body.stage3.1.4.running_var": (256,),
        "fpn.output1.0.weight": (64, 64, 1, 1),
        "fpn.merge2.1.bias": (64,),
        "ssh3.conv7x7_3.1.weight": (16,),
        "ClassHead.2.conv1x1.weight": (4, 64, 1, 1),
        "BboxHead.0.conv1x1.bias": (8,),
        "LandmarkHead.1.conv1x1.weight": (20, 64, 1, 1),
    }
    conv = convert_retinaface_state_dict({k: torch.zeros(s) for k, s in known.items()})
    assert len(conv) == len(known)
    for k, v in conv.items():
        assert tuple(mnet[k].shape) == tuple(v.shape), k
    r50 = r50_shapes
    known = {"body.conv1.weight": (64, 3, 7, 7), "body.layer4.2.bn3.running_mean": (2048,)}
    known |= {"fpn.output3.0.weight": (256, 2048, 1, 1), "ssh1.conv3X3.0.weight": (128, 256, 3, 3)}
    for k, v in convert_retinaface_state_dict({k: torch.zeros(s) for k, s in known.items()}).items():
        assert tuple(r50[k].shape) == tuple(v.shape), k
    # every key of the network maps back and forth one to one
    for own in (mnet, r50):
        assert list(convert_retinaface_state_dict({distributed_name(k): v for k, v in own.items()})) == list(own)


def test_retinaface_loads_a_distributed_checkpoint_and_runs(mnet_checkpoint):
    net, path = mnet_checkpoint
    det = build_detector("retinaface", weights=path, score_threshold=0.0, keep_top_k=20)
    assert det.network == "mobilenet0.25"  # guessed from the keys
    for a, b in zip(det.net.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)
    img = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    loc, conf, lm = det.raw(img)
    n = sum(math.ceil(64 / s) * math.ceil(96 / s) * 2 for s in (8, 16, 32))
    assert n == 252 and loc.shape == (1, n, 4) and conf.shape == (1, n, 2) and lm.shape == (1, n, 10)
    torch.testing.assert_close(conf.sum(-1), torch.ones(1, n))
    # the network sees BGR minus (104, 117, 123), unscaled
    x = torch.from_numpy((img[:, :, ::-1].astype(np.float32) - [104, 117, 123]).transpose(2, 0, 1).copy())
    torch.testing.assert_close(net(x[None].float())[0], loc)
    faces = det(img)
    assert 0 < len(faces) <= 20
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    assert all(f.landmarks.shape == (5, 2) and not f.landmarks_estimated for f in faces)


def test_retinaface_max_side_downscales_and_maps_back(mnet_checkpoint):
    img = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(img, 2, 0), 2, 1)  # 2x nearest: a bilinear halving gives img back exactly
    kw = dict(weights=mnet_checkpoint[1], score_threshold=0.0, keep_top_k=30)
    boxes, scores, points = build_detector("retinaface", **kw).detect_arrays(img)
    boxes2, scores2, points2 = build_detector("retinaface", max_side=64, **kw).detect_arrays(big)
    np.testing.assert_allclose(scores2, scores, atol=1e-6)
    np.testing.assert_allclose(boxes2, 2 * boxes, atol=1e-3)
    np.testing.assert_allclose(points2, 2 * points, atol=1e-3)


def test_retinaface_resnet50_checkpoint_without_prefix(tmp_path, r50_shapes):
    path = tmp_path / "detection_Resnet50_Final.pth"  # facexlib's name; plain keys
    torch.save({distributed_name(k): torch.full(v.shape, 0.01) for k, v in r50_shapes.items()}, path)
    det = build_detector("retinaface", weights=path)
    assert det.network == "resnet50"
    loc, conf, lm = det.raw(np.zeros((32, 32, 3), np.uint8))
    assert loc.shape == (1, (16 + 4 + 1) * 2, 4)


def test_retinaface_missing_or_wrong_weights(tmp_path, mnet_checkpoint):
    with pytest.raises(MissingWeightsError, match="needs weights=PATH"):
        build_detector("retinaface")
    with pytest.raises(MissingWeightsError, match="nope.pth"):
        build_detector("retinaface", weights=tmp_path / "nope.pth")
    with pytest.raises(FaceParseError, match="does not fit"):
        build_detector("retinaface", weights=mnet_checkpoint[1], network="resnet50")
    with pytest.raises(FaceParseError, match="expected one of mobilenet0.25, resnet50"):
        build_detector("retinaface", weights=mnet_checkpoint[1], network="vgg")
    assert build_detector("retinaface", weights=mnet_checkpoint[1], network="mobile0.25").network == "mobilenet0.25"
    bad = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(FaceParseError, match="cannot tell the RetinaFace network"):
        build_detector("retinaface", weights=bad)


def test_prior_boxes_by_hand():
    pri = prior_boxes(32, 48)
    assert pri.shape == ((4 * 6 + 2 * 3 + 1 * 2) * 2, 4)
    torch.testing.assert_close(pri[0], torch.tensor([4 / 48, 4 / 32, 16 / 48, 16 / 32]))
    torch.testing.assert_close(pri[1], torch.tensor([4 / 48, 4 / 32, 32 / 48, 32 / 32]))
    torch.testing.assert_close(pri[2], torch.tensor([12 / 48, 4 / 32, 16 / 48, 16 / 32]))  # next column
    torch.testing.assert_close(pri[12], torch.tensor([4 / 48, 12 / 32, 16 / 48, 16 / 32]))  # next row
    torch.testing.assert_close(pri[48], torch.tensor([8 / 48, 8 / 32, 64 / 48, 64 / 32]))  # stride 16
    torch.testing.assert_close(pri[-1], torch.tensor([48 / 48, 16 / 32, 512 / 48, 512 / 32]))  # stride 32


def test_decoding_by_hand():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.1]])
    loc = torch.tensor([[1.0, -2.0, math.log(2.0) / 0.2, 0.0]])
    # centre (0.5 + 1 * 0.1 * 0.2, 0.5 - 2 * 0.1 * 0.1) = (0.52, 0.48); size (0.2 * 2, 0.1)
    torch.testing.assert_close(decode_boxes(loc, prior), torch.tensor([[0.32, 0.43, 0.72, 0.53]]))
    off = torch.tensor([[1.0, 0.0, 0.0, 1.0, -1.0, -1.0, 0.5, 2.0, 0.0, 0.0]])
    want = [[0.52, 0.5, 0.5, 0.51, 0.48, 0.49, 0.51, 0.52, 0.5, 0.5]]
    torch.testing.assert_close(decode_landmarks(off, prior), torch.tensor(want))


def test_nms_removes_duplicates_with_inclusive_pixel_areas():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10.5, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert nms_inclusive(boxes, scores, 0.4).tolist() == [0, 2]
    # IoU of these two: 27/135 = 0.20 with exclusive areas, 40/160 = 0.25 with the reference's +1 areas
    pair = torch.tensor([[0.0, 0, 9, 9], [6, 0, 15, 9]])
    assert nms_inclusive(pair, torch.tensor([0.9, 0.8]), 0.22).tolist() == [0]
    assert nms_inclusive(pair, torch.tensor([0.9, 0.8]), 0.26).tolist() == [0, 1]
    # equal scores keep the given order
    same = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    assert nms_inclusive(same, torch.tensor([0.5, 0.5]), 0.4).tolist() == [0]


# ---------------------------------------------------------------------------- YuNet
def tiny_yunet_onnx(path, size: int, planted: dict) -> None:
    """An ONNX graph with YuNet's input and outputs (cls/obj/bbox/kps at strides 8/16/32, each
    1 x N x C): a zero convolution of the input plus a constant map with one planted anchor."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outs = [], [], []
    for kind, ch in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10)):
        for s in (8, 16, 32):
            n, name = size // s, f"{kind}_{s}"
            k = np.zeros((1, ch, n, n), np.float32)
            if s in planted:
                r, c, vals = planted[s][0], planted[s][1], planted[s][2][kind]
                k[0, :, r, c] = vals
            inits += [
                numpy_helper.from_array(np.zeros((ch, 3, s, s), np.float32), f"w_{name}"),
                numpy_helper.from_array(k, f"k_{name}"),
                numpy_helper.from_array(np.array([1, n * n, ch], np.int64), f"shape_{name}"),
            ]
            nodes += [
                helper.make_node("Conv", ["input", f"w_{name}"], [f"c_{name}"], strides=[s, s]),
                helper.make_node("Add", [f"c_{name}", f"k_{name}"], [f"a_{name}"]),
                helper.make_node("Transpose", [f"a_{name}"], [f"t_{name}"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [f"t_{name}", f"shape_{name}"], [name]),
            ]
            outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, n * n, ch]))
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    model = helper.make_model(
        helper.make_graph(nodes, "tiny_yunet", [inp], outs, inits), opset_imports=[helper.make_opsetid("", 11)]
    )
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.mark.skipif(not hasattr(cv2, "FaceDetectorYN"), reason="this OpenCV build has no cv2.FaceDetectorYN")
def test_yunet_wrapper_maps_opencv_rows_to_faces(tmp_path):
    path = tmp_path / "tiny_yunet.onnx"
    kps = [-0.5, -1.0, 1.5, -1.0, 0.5, 0.0, -0.25, 1.0, 1.25, 1.0]
    planted = {
        8: (3, 4, {"cls": [0.81], "obj": [0.64], "bbox": [0.5, -0.25, math.log(2.0), math.log(3.0)], "kps": kps})
    }
    tiny_yunet_onnx(path, 64, planted)
    det = build_detector("yunet", weights=path, score_threshold=0.5)
    faces = det(np.zeros((64, 64, 3), np.uint8))
    assert len(faces) == 1
    f = faces[0]
    # YuNet decoding (anchor at row 3, column 4, stride 8): centre ((4 + 0.5) 8, (3 - 0.25) 8) = (36, 22),
    # size (2 * 8, 3 * 8); score sqrt(cls * obj); points ((kx + 4) 8, (ky + 3) 8)
    np.testing.assert_allclose(f.box, (28, 10, 44, 34), atol=1e-4)
    assert f.score == pytest.approx(math.sqrt(0.81 * 0.64), abs=1e-5)
    want = (np.array(kps, np.float32).reshape(5, 2) + [4, 3]) * 8
    np.testing.assert_allclose(f.landmarks, want, atol=1e-4)
    assert not f.landmarks_estimated
    # downscaled input, results in the original pixels
    big = build_detector("yunet", weights=path, score_threshold=0.5, max_side=64)(np.zeros((128, 128, 3), np.uint8))
    np.testing.assert_allclose(big[0].box, np.array((28, 10, 44, 34)) * 2, atol=1e-3)
    assert build_detector("yunet", weights=path, score_threshold=0.8)(np.zeros((64, 64, 3), np.uint8)) == []


def test_yunet_missing_or_bad_file(tmp_path):
    with pytest.raises(MissingWeightsError, match="weights=PATH"):
        build_detector("yunet")
    with pytest.raises(MissingWeightsError, match="nope.onnx"):
        build_detector("yunet", weights=tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    if hasattr(cv2, "FaceDetectorYN"):
        with pytest.raises(FaceParseError, match="bad.onnx"):
            build_detector("yunet", weights=bad)
