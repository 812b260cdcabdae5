"""Commands on top: the ``careledger`` CLI router, the demo and the benchmarks.

The only floor that may import every wing (see docs/design.md, Packages).
"""
