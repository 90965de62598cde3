"""Shared vocabularies: COCO categories, attribute values (colours, materials), imaginative targets.

Kept in one place so that prompts (which name an edit) and pipelines (which perform it) agree.
"""
from __future__ import annotations

from typing import Dict, Tuple

# The edit types of the data model (DESIGN.md): every sample's ``edit_type`` is one of these.
EDIT_TYPES: Tuple[str, ...] = ("replace", "remove", "attribute", "add")

# The edit types `refcoco-edit build` generates (templates, targets and pipelines exist for them).
# ``add`` is in the data model but has no templates yet.
BUILD_EDIT_TYPES: Tuple[str, ...] = ("replace", "remove", "attribute")

# The 80 COCO categories: id -> name (the ids of instances_train2014.json).
COCO_CATEGORIES: Dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}

COCO_SUPERCATEGORIES: Dict[str, Tuple[int, ...]] = {
    "person": (1,), "vehicle": (2, 3, 4, 5, 6, 7, 8, 9),
    "outdoor": (10, 11, 13, 14, 15), "animal": (16, 17, 18, 19, 20, 21, 22, 23, 24, 25),
    "accessory": (27, 28, 31, 32, 33), "sports": (34, 35, 36, 37, 38, 39, 40, 41, 42, 43),
    "kitchen": (44, 46, 47, 48, 49, 50, 51), "food": (52, 53, 54, 55, 56, 57, 58, 59, 60, 61),
    "furniture": (62, 63, 64, 65, 67, 70), "electronic": (72, 73, 74, 75, 76, 77),
    "appliance": (78, 79, 80, 81, 82), "indoor": (84, 85, 86, 87, 88, 89, 90),
}

# Colour attribute values and the RGB they are rendered with by the classical recolouring.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (200, 30, 35), "orange": (240, 130, 20), "yellow": (240, 210, 40),
    "green": (40, 160, 60), "blue": (35, 80, 200), "purple": (120, 50, 170),
    "pink": (240, 120, 170), "white": (240, 240, 235), "black": (25, 25, 28),
    "gray": (128, 128, 128), "brown": (120, 75, 40),
}

# Material attribute values (the classical backend renders a procedural texture for each).
MATERIALS: Tuple[str, ...] = ("wooden", "metallic", "golden", "marble", "glass", "stone")

# Imaginative replace targets: no COCO exemplar exists, so only generative backends can make them.
IMAGINATIVE_TARGETS: Tuple[str, ...] = (
    "a robot", "a dragon", "a unicorn", "a snowman", "a cactus", "a treasure chest",
    "a crystal ball", "a jack-o'-lantern", "a paper lantern", "a rubber duck", "a sandcastle",
    "a hot air balloon", "a pineapple", "a panda", "a penguin", "a lighthouse",
)
