"""AlexNet written directly in PyTorch: the reference for tests and benchmarks."""


def torch_alexnet(variant, classes):
    """AlexNet written directly in PyTorch: the paper's (Caffe's bvlc_alexnet),
    torchvision's layout or ZFNet, with state-dict keys as in torchvision."""
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
    elif variant == "zfnet":
        # Zeiler & Fergus, figure 3, with cuda-convnet's output sizes: conv1's last
        # window reads one zero past the edge, pooling rounds up (ceil_mode).
        features = [
            nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 96, 7, stride=2), nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0),
            nn.Conv2d(96, 256, 5, stride=2), nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        ]
    else:  # torchvision.models.alexnet, AdaptiveAvgPool2d omitted (identity at 224)
        features = [
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        ]
    # torchvision puts dropout before fc6 and fc7, the papers after them; an
    # identity stands for the flatten, so the keys are torchvision's.
    classifier = [
        nn.Dropout() if variant == "one_weird_trick" else nn.Identity(),
        nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, classes),
    ]
    names = None  # torchvision's own keys
    if variant != "one_weird_trick":  # keys of the weighted layers in these Sequentials
        keys = [f"features.{index}" for index, module in enumerate(features)
                if isinstance(module, nn.Conv2d)]
        keys += [f"classifier.{index}" for index, module in enumerate(classifier)
                 if isinstance(module, nn.Linear)]
        layers = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
        names = dict(zip(keys, layers))

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(*classifier)

        def forward(self, x):
            return self.classifier(self.features(x).flatten(1))

    return Reference().eval(), names
