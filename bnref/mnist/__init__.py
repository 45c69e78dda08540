"""The article's MNIST model: data loading and validation, the models, the trainers and the command line
(``python -m bnref.train``). Imports the root, ``bnref.layers`` and ``bnref.check`` only.

* :mod:`~bnref.mnist.data`: MNIST found locally and validated by content;
* :mod:`~bnref.mnist.models`: the article's network in Keras and PyTorch, its initial weights;
* :mod:`~bnref.mnist.common`: what both trainers share (data preparation, checks, the run record);
* :mod:`~bnref.mnist.torch_training`, :mod:`~bnref.mnist.keras_training`: the two trainers;
* :mod:`~bnref.mnist.training`: the book's MNIST experiment;
* :mod:`~bnref.mnist.verdicts`: the rules that turn per-seed results into verdicts, for every chapter;
* :mod:`~bnref.mnist.cli`: the command line behind ``python -m bnref.train``.
"""
