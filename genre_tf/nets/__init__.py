"""Stage 2, networks: the encoders (BERT/MiniLM/MPNet text, EfficientNet-Lite/ResNet50 posters), their weights read
offline, the Keras heads and layers, and a run's network rebuilt from its directory.
Imports data and the shared modules.
"""
