"""What several tools of stress/ share, so that no tool copies another's code.

    paths.py   ROOT, the repository root (the directory holding stress/): the tools chdir
               there and put it on the PYTHONPATH of every process they start, so that
               servers, workers and clients import `stress.*` the same way
"""
