"""The four hot-path ops, each with backend="auto"|"native"|"torch".

This package is the only code that touches pyanom._C.
"""

from pyanom.ops.coreset import greedy_coreset
