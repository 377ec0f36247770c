"""AlexNet written directly in PyTorch: the reference for tests and benchmarks."""


def torch_alexnet(variant, classes):
    """AlexNet written directly in PyTorch: the paper's (Caffe's bvlc_alexnet)
    or torchvision's layout, with state-dict keys as in torchvision."""
    import torch.nn as nn

    if variant == "original":
        features = [
            nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(),
            nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(),
            nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(),
            nn.MaxPool2d(3, 2),
        ]
        classifier = [
            nn.Identity(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, classes),
        ]
        # Keys of weighted layers in this Sequential.
        names = {"features.0": "conv1", "features.4": "conv2",
                 "features.8": "conv3", "features.10": "conv4",
                 "features.12": "conv5", "classifier.1": "fc6",
                 "classifier.4": "fc7", "classifier.6": "fc8"}
    else:  # torchvision.models.alexnet, AdaptiveAvgPool2d omitted (identity at 224)
        features = [
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        ]
        classifier = [
            nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, classes),
        ]
        names = None  # torchvision's own keys

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(*classifier)

        def forward(self, x):
            return self.classifier(self.features(x).flatten(1))

    return Reference().eval(), names
