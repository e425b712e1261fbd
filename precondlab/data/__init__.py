"""Real image datasets; importing this package registers dataset.cifar10, dataset.fashion_mnist
and dataset.image_folder."""

from precondlab.data import cifar10, fashion_mnist, image_folder  # noqa: F401  (registers them)
from precondlab.data.cifar10 import CIFAR10  # noqa: F401
from precondlab.data.fashion_mnist import FashionMNIST  # noqa: F401
from precondlab.data.image_folder import ImageFolder  # noqa: F401
from precondlab.data.images import DatasetError, ImageDataset, default_data_dir  # noqa: F401
