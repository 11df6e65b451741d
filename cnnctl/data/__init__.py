"""Datasets: one module per file format, each registering the datasets stored in that format.

Modules here must not import torch at import time; loaders import it when called.
"""
