"""`resnet-serve tune`: a Model Analyzer-style search for an entry's serving configuration.

``space`` says what is searched (runtimes, and the grid of batching, instance and thread
settings, pruned with reasons), ``pareto`` is the arithmetic of choosing (a leaf), and
``search`` measures candidates on the embedded server and writes the winner as a new version.
"""
