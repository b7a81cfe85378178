"""Datasets: one module per built-in dataset (its reader, class names and settings) registered in registry.py, the image and condition-map helpers they share, and image folders. May import core only: the models never import a dataset, and what a dataset decides (the
ignore value of class maps, a condition's factor) reaches them as an argument."""
