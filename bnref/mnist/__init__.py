"""The article's MNIST model: data loading and validation, the models, the trainers and the command line
(``python -m bnref.train``). Imports the root, ``bnref.layers`` and ``bnref.check`` only.
"""
