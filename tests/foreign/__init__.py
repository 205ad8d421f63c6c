"""Test fixtures written in other tools' documented layouts (IMOD, RELION, EMAN2).

These modules import nothing from emflow: a reader is only checked against the tool's own
definition when the file it reads was not made by emflow's writers.
"""
