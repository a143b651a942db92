"""hierarchicalvlm: the Python twin of hvlm's attention library.

The modules in ``hierarchicalvlm.attention`` compute the same functions as the C++ library
(docs/attention.md is the contract) from the same weights, so models trained here can be
served by hvlm: export them with ``hierarchicalvlm.export``.
"""

__version__ = "0.1.0"
