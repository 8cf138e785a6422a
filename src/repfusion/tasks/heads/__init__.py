"""Task heads built around a repfusion student backbone: BiSeNetV1 for face parsing, heatmap heads for landmarks.

Each network keeps the student under the attribute `backbone`, so a distilled student's state dict
loads strictly into `network.backbone` and only the head starts at random.
"""
