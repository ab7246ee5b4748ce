"""ImageNet-1k classes by WordNet id (wnid): index, name, and named subsets (presets).

The table comes from packages already installed, never from the network: the 1,000 wnids in class-index
order from timm's ImageNet metadata (`timm.data.ImageNetInfo`), their names from torchvision's ImageNet
weights metadata (unique names: "crane bird" and "crane" are told apart).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

# fast.ai's Imagenette and Imagewoof (github.com/fastai/imagenette): 10 easy classes, 10 dog breeds.
IMAGENETTE = (
    "n01440764",  # tench
    "n02102040",  # English springer
    "n02979186",  # cassette player
    "n03000684",  # chain saw
    "n03028079",  # church
    "n03394916",  # French horn
    "n03417042",  # garbage truck
    "n03425413",  # gas pump
    "n03445777",  # golf ball
    "n03888257",  # parachute
)
IMAGEWOOF = (
    "n02086240",  # Shih-Tzu
    "n02087394",  # Rhodesian ridgeback
    "n02088364",  # beagle
    "n02089973",  # English foxhound
    "n02093754",  # Border terrier
    "n02096294",  # Australian terrier
    "n02099601",  # golden retriever
    "n02105641",  # Old English sheepdog
    "n02111889",  # Samoyed
    "n02115641",  # dingo
)
# ImageNet-100 of Contrastive Multiview Coding (Tian et al. 2019), in the order of
# github.com/HobbitLong/CMC/blob/master/imagenet100.txt (labels follow the sorted order, as everywhere here).
# fmt: off
IMAGENET100 = (
    "n02869837", "n01749939", "n02488291", "n02107142", "n13037406", "n02091831", "n04517823", "n04589890",
    "n03062245", "n01773797", "n01735189", "n07831146", "n07753275", "n03085013", "n04485082", "n02105505",
    "n01983481", "n02788148", "n03530642", "n04435653", "n02086910", "n02859443", "n13040303", "n03594734",
    "n02085620", "n02099849", "n01558993", "n04493381", "n02109047", "n04111531", "n02877765", "n04429376",
    "n02009229", "n01978455", "n02106550", "n01820546", "n01692333", "n07714571", "n02974003", "n02114855",
    "n03785016", "n03764736", "n03775546", "n02087046", "n07836838", "n04099969", "n04592741", "n03891251",
    "n02701002", "n03379051", "n02259212", "n07715103", "n03947888", "n04026417", "n02326432", "n03637318",
    "n01980166", "n02113799", "n02086240", "n03903868", "n02483362", "n04127249", "n02089973", "n03017168",
    "n02093428", "n02804414", "n02396427", "n04418357", "n02172182", "n01729322", "n02113978", "n03787032",
    "n02089867", "n02119022", "n03777754", "n04238763", "n02231487", "n03032252", "n02138441", "n02104029",
    "n03837869", "n03494278", "n04136333", "n03794056", "n03492542", "n02018207", "n04067472", "n03930630",
    "n03584829", "n02123045", "n04229816", "n02100583", "n03642806", "n04336792", "n03259280", "n02116738",
    "n02108089", "n03424325", "n01855672", "n02090622",
)
# fmt: on

PRESETS: dict[str, tuple[str, ...]] = {
    "imagenette": IMAGENETTE,
    "imagewoof": IMAGEWOOF,
    "imagenet100": IMAGENET100,
}


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k wnids; position = class index of ImageNet-1k classifiers."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo("imagenet-1k").label_names())


@functools.cache
def _index_of() -> dict[str, int]:
    return {wnid: i for i, wnid in enumerate(imagenet_wnids())}


@functools.cache
def imagenet_names() -> tuple[str, ...]:
    """Human-readable names of the 1,000 classes in class-index order ("tench", "goldfish", ...)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def imagenet_index(wnid: str) -> int:
    try:
        return _index_of()[wnid]
    except KeyError:
        raise ValueError(f"{wnid!r} is not an ImageNet-1k class wnid (such as 'n01440764')") from None


def imagenet_name(wnid: str) -> str:
    return imagenet_names()[imagenet_index(wnid)]


def check_wnids(wnids: Sequence[str], source: str) -> list[str]:
    """`wnids` sorted, after checking that each is an ImageNet-1k class and none repeats."""
    repeated = sorted(w for w, n in Counter(wnids).items() if n > 1)
    if repeated:
        raise ValueError(f"{source}: wnids listed more than once: {repeated}")
    unknown = [w for w in wnids if w not in _index_of()]
    if unknown:
        raise ValueError(f"{source}: not ImageNet-1k class wnids: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    if not wnids:
        raise ValueError(f"{source}: no classes")
    return sorted(wnids)


def read_wnid_file(path: Path) -> list[str]:
    """One wnid per line (the first word of the line); blank lines and `#` comments are skipped."""
    words = (line.split("#", 1)[0].split() for line in path.read_text().splitlines())
    return [w[0] for w in words if w]


def resolve_wnids(classes: Sequence[str] | str) -> list[str]:
    """A preset name, a wnid file, or a list of wnids (or one comma-separated string of them) -> the checked
    wnids in sorted (label) order."""
    if isinstance(classes, str) and "," in classes:  # `--data.classes n01443537,n01629819`, as typed
        classes = [wnid.strip() for wnid in classes.split(",") if wnid.strip()]
    if not isinstance(classes, str):
        return check_wnids(list(classes), "data.classes")
    if classes in PRESETS:
        return check_wnids(PRESETS[classes], f"preset {classes!r}")
    path = Path(classes).expanduser()
    if path.is_file():
        return check_wnids(read_wnid_file(path), f"data.classes file {path}")
    raise ValueError(
        f"data.classes={classes!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file of wnids; "
        "give wnids for explicit classes: n01443537,n01629819 or [n01443537, n01629819]"
    )
