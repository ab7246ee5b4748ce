import hashlib

import pytest

from datamodules.imagenet_classes import (
    IMAGENET100,
    PRESETS,
    imagenet_index,
    imagenet_name,
    imagenet_names,
    imagenet_wnids,
    resolve_wnids,
)


def test_the_table_has_the_1000_classes_in_index_order():
    wnids, names = imagenet_wnids(), imagenet_names()
    assert len(wnids) == len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    assert len(names) == len(set(names)) == 1000  # unique: "crane" (machine) vs "crane bird"
    assert (imagenet_index("n01440764"), imagenet_name("n01440764")) == (0, "tench")
    assert (imagenet_index("n03888257"), imagenet_name("n03888257")) == (701, "parachute")
    assert (imagenet_index("n15075141"), imagenet_name("n15075141")) == (999, "toilet tissue")
    with pytest.raises(ValueError, match="n99999999"):
        imagenet_index("n99999999")


@pytest.mark.parametrize(("preset", "count"), [("imagenette", 10), ("imagewoof", 10), ("imagenet100", 100)])
def test_presets_have_their_size_no_duplicates_and_only_imagenet_1k_classes(preset, count):
    wnids = PRESETS[preset]
    assert len(wnids) == len(set(wnids)) == count
    assert set(wnids) <= set(imagenet_wnids())
    assert resolve_wnids(preset) == sorted(wnids)


def test_presets_are_the_published_lists():
    names = [imagenet_name(w) for w in resolve_wnids("imagenette")]
    assert names[:3] == ["tench", "English springer", "cassette player"] and names[-1] == "parachute"
    assert {imagenet_name(w) for w in PRESETS["imagewoof"]} >= {"beagle", "Samoyed", "dingo", "golden retriever"}
    # sha256 of github.com/HobbitLong/CMC/blob/master/imagenet100.txt (one wnid per line, in file order)
    digest = hashlib.sha256(("\n".join(IMAGENET100) + "\n").encode()).hexdigest()
    assert digest == "79f3f1552ccc478ce24bd934b4573625db584ddc1f4643ae23c994a94cb11397"


def test_classes_from_a_list_or_a_file_sort_into_label_order(tmp_path):
    assert resolve_wnids(["n03888257", "n01440764"]) == ["n01440764", "n03888257"]
    listing = tmp_path / "wnids.txt"
    listing.write_text("# my subset\nn03888257 parachute\n\nn01440764  # tench\n")
    assert resolve_wnids(str(listing)) == ["n01440764", "n03888257"]


@pytest.mark.parametrize(
    ("classes", "named"),
    [
        (["n01440764", "n01440764"], "more than once: ['n01440764']"),
        (["n01440764", "n0144076x"], "n0144076x"),
        ([], "no classes"),
        ("imagenette2", "imagenette2"),
    ],
)
def test_bad_class_lists_are_errors_naming_the_value(classes, named):
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        resolve_wnids(classes)
