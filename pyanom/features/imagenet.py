"""The ImageNet normalisation that torchvision-trained backbones (ResNets, VGG16) expect."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
