"""The book's experiments: each declared once (configuration, seeds, runner, record name), run by
``python -m bnref.experiments`` into JSON records. The top layer: it may import everything below it.
"""
