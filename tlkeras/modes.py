"""Preprocessing modes: how a tlkeras image model maps its input, RGB pixels in [0, 255], to the range its
backbone was trained on. `tlkeras.layers.ImagePreprocessing` runs them; backbone sources choose one. No
TensorFlow here: config checks and `tlkeras backbones` read these without it.

>>> "torch" in PREPROCESSING_MODES, "affine" in PREPROCESSING_MODES, "affine" in ALL_MODES
(True, False, True)
"""

# What a user may set as backbone_options.preprocessing.
PREPROCESSING_MODES = ("none", "tf", "torch", "caffe", "unit")
# "affine" (x * scale + offset per channel, with parameters) comes from a KerasHub preset's converter.
ALL_MODES = (*PREPROCESSING_MODES, "affine")
