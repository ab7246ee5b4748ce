"""Use an exported model (`transfer export`): load its folder and predict on images or texts.

    from inference import Predictor
    predictor = Predictor.load("exports/cifar10")          # device="cuda" for a GPU
    predictor.predict(["cat.jpg", pil_image, uint8_tensor])  # -> [Prediction(label="cat", probability=0.93, ...)]

Reads only the export folder (`inference.folder`) and needs no Lightning: plain PyTorch, timm for image
backbones, transformers for text ones.
"""

from inference.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
