import numpy as np
import pytest

import faceparse
from faceparse.labels import IGNORE_INDEX, LabelSet, get_label_set
from faceparse.registry import Registry


def test_registry_duplicate_and_unknown():
    reg = Registry("thing")

    @reg.register("alpha_one", paper="P")
    def alpha_one(x=1):
        return x

    assert reg.build("alpha_one", x=5) == 5
    assert reg.metadata("alpha_one") == {"paper": "P"}
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha_one")(lambda: 0)
    with pytest.raises(KeyError, match="alpha_one"):
        reg.get("alpha_onee")


def test_unknown_model_suggests_close_names():
    with pytest.raises(KeyError) as err:
        faceparse.build_model("unett")
    assert "unet" in str(err.value) and "Did you mean" in str(err.value)
    with pytest.raises(KeyError, match="synthetic"):
        faceparse.build_dataset("synthetc")


def test_list_models_wildcard():
    names = faceparse.list_models("*net")
    assert "unet" in names and all(n.endswith("net") for n in names)
    assert set(faceparse.list_models()) >= {"unet", "fpn", "deeplabv3plus", "segformer"}


def test_label_set_presets():
    celeb = get_label_set("celebamask_hq")
    assert celeb.num_classes == 19
    assert celeb.classes[1] == "neck" and celeb.classes[15] == "eyeglasses" and celeb.classes[18] == "necklace"
    assert celeb.source_names[15] == "eye_g"
    bisenet = get_label_set("celebamask_hq_bisenet")
    assert bisenet.classes[6] == "eyeglasses" and bisenet.classes[18] == "hat"
    assert get_label_set("lapa").num_classes == 11 and get_label_set("helen").num_classes == 11
    assert get_label_set("part_labels").classes == ("background", "face", "hair")
    assert get_label_set("cofw").num_classes == 2
    assert get_label_set("cofw_occlusion").classes[2] == "occlusion"
    # left/right pairs are found by name
    assert set(map(frozenset, celeb.flip_pairs)) == {frozenset((4, 5)), frozenset((6, 7)), frozenset((8, 9))}
    lut = celeb.flip_lut
    assert lut[8] == 9 and lut[9] == 8 and lut[2] == 2 and lut[IGNORE_INDEX] == IGNORE_INDEX


def test_mapping_celeb_to_lapa_and_bisenet():
    celeb, lapa, bisenet = (get_label_set(n) for n in ("celebamask_hq", "lapa", "celebamask_hq_bisenet"))
    lut = celeb.mapping_to(lapa)
    assert lut[celeb.index("nose")] == lapa.index("nose") == 6
    assert lut[celeb.index("mouth")] == lapa.index("mouth") == 8
    assert lut[celeb.index("hat")] == 0  # not in LaPa -> background
    assert celeb.mapping_to(lapa, unmapped="ignore")[celeb.index("hat")] == IGNORE_INDEX
    assert lut[IGNORE_INDEX] == IGNORE_INDEX
    # full permutation between the two CelebAMask-HQ orders: round trip is the identity
    fwd, back = celeb.mapping_to(bisenet), bisenet.mapping_to(celeb)
    assert sorted(fwd[:19]) == list(range(19))
    np.testing.assert_array_equal(back[fwd[:19]], np.arange(19))


def test_mapping_to_coarse_sets():
    celeb, parts = get_label_set("celebamask_hq"), get_label_set("part_labels")
    lut = celeb.mapping_to(parts)
    for name in ("skin", "nose", "left_eye", "upper_lip", "mouth"):
        assert lut[celeb.index(name)] == 1
    assert lut[celeb.index("hair")] == 2
    assert lut[celeb.index("cloth")] == 0
    mask = np.array([[2, 14], [3, 255]])
    np.testing.assert_array_equal(lut[mask], [[1, 2], [0, 255]])
    assert get_label_set("lapa").mapping_to(get_label_set("cofw"))[1] == 1


def test_label_set_round_trip_and_validation():
    ls = LabelSet("custom", ("background", "left_eye", "right_eye"))
    assert ls.flip_pairs == ((1, 2),)
    assert LabelSet.from_dict(ls.to_dict()) == ls
    with pytest.raises(ValueError, match="duplicate"):
        LabelSet("bad", ("a", "a"))
    with pytest.raises(KeyError, match="lapa"):
        get_label_set("lapaa")


def test_model_info_counts_parameters_without_materialising():
    import torch

    info = faceparse.model_info("unet", encoder="resnet18", label_set="lapa")
    assert info["paper"].startswith("segmentation-models-pytorch") and info["input_size"] == 512
    real = faceparse.build_model("unet", encoder="resnet18", label_set="lapa")
    assert info["parameters"] == sum(p.numel() for p in real.parameters())
    assert not isinstance(info["parameters"], torch.Tensor)


def test_model_cfg_is_typed_and_validated():
    from faceparse.registry import ModelCfg

    cfg = faceparse.MODELS.cfg("consensus_net")
    assert isinstance(cfg, ModelCfg) and cfg.label_set == "cofw_occlusion" and cfg.input_size == 128
    assert cfg.tiny == {"width": 8, "input_size": 32} and cfg.test_input_size == 32
    meta = faceparse.MODELS.metadata("consensus_net")  # the dict view keeps working
    assert meta["paper"] == cfg.paper and meta["tiny"] == cfg.tiny and meta["exportable"] is True
    meta["tiny"]["width"] = 999  # a copy: the registry is not changed through it
    assert faceparse.MODELS.cfg("consensus_net").tiny["width"] == 8
    assert faceparse.MODELS.metadata("segface_resnet101")["backbone"] == "resnet101"  # extra facts flattened
    with pytest.raises(ValueError, match="not_exportable_reason"):
        ModelCfg(paper="P", exportable=False)
    with pytest.raises(KeyError, match="without a ModelCfg"):
        faceparse.LOSSES.cfg("ce")


def test_registry_imports_its_modules_on_first_query(tmp_path, monkeypatch):
    (tmp_path / "fp_fake_models.py").write_text(
        "from faceparse.registry import REG_UNDER_TEST as R, ModelCfg\n"
        "@R.register(ModelCfg(paper='P', tiny={}))\n"
        "def fake_one(**kw):\n    return kw\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("model", ["fp_fake_models"])
    monkeypatch.setattr(faceparse.registry, "REG_UNDER_TEST", reg, raising=False)
    assert "not loaded" in repr(reg)
    assert reg.list() == ["fake_one"] and reg.cfg("fake_one").paper == "P"
    assert reg.build("fake_one", a=1) == {"a": 1}


def test_not_exportable_is_derived_from_the_configs():
    from faceparse.export import NOT_EXPORTABLE

    expected = {n for n in faceparse.list_models() if not faceparse.MODELS.cfg(n).exportable}
    assert set(NOT_EXPORTABLE) == expected and {"mct_vit_tiny", "s3pot_tiny"} <= expected
    assert "unet" not in NOT_EXPORTABLE and "TorchScript" in NOT_EXPORTABLE["s3pot_vit_b"]
    assert dict(NOT_EXPORTABLE)["mct_vit_small"] == faceparse.MODELS.cfg("mct_vit_small").not_exportable_reason


def test_generic_label_sets():
    from faceparse.labels import generic_label_set

    ls = generic_label_set(4)
    assert ls.name == "generic_4" and ls.classes == ("background", "class_1", "class_2", "class_3")
    assert ls.flip_pairs == () and get_label_set("generic_4") == ls
    assert LabelSet.from_dict(ls.to_dict()) == ls
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="positive integer"):
            generic_label_set(bad)
    with pytest.raises(KeyError, match="unknown label set"):
        get_label_set("generic_x")
